from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

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
