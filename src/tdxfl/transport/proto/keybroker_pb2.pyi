from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReleaseKeyRequest(_message.Message):
    __slots__ = ("key_name",)
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_name: str
    def __init__(self, key_name: _Optional[str] = ...) -> None: ...

class ReleaseKeyReply(_message.Message):
    __slots__ = ("released", "key", "reason", "audit_seq")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    released: bool
    key: bytes
    reason: str
    audit_seq: int
    def __init__(self, released: _Optional[bool] = ..., key: _Optional[bytes] = ..., reason: _Optional[str] = ..., audit_seq: _Optional[int] = ...) -> None: ...

class CheckpointRecord(_message.Message):
    __slots__ = ("run_id", "round", "sha256")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    sha256: bytes
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class RecordReply(_message.Message):
    __slots__ = ("recorded", "reason", "audit_seq")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    reason: str
    audit_seq: int
    def __init__(self, recorded: _Optional[bool] = ..., reason: _Optional[str] = ..., audit_seq: _Optional[int] = ...) -> None: ...

class LatestCheckpointRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class LatestCheckpointReply(_message.Message):
    __slots__ = ("found", "record", "audit_seq")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    found: bool
    record: CheckpointRecord
    audit_seq: int
    def __init__(self, found: _Optional[bool] = ..., record: _Optional[_Union[CheckpointRecord, _Mapping]] = ..., audit_seq: _Optional[int] = ...) -> None: ...
