"""Rollback protection for sealed checkpoints: the record the key broker keeps, and the decisions.

Sealing proves that a checkpoint is genuine, not that it is the newest: a host can put an older
genuine checkpoint back under the latest one's name. So after each checkpoint the parameter
server reports a :class:`CheckpointRecord` -- (run id, round, SHA-256 of the sealed file) -- to
the key broker, which keeps the latest one per run in its hash-chained audit log and refuses a
record older than the one it holds (:func:`record_refusal`). On resume the PS compares the
checkpoint it found with the broker's record (:func:`check_resume`).

Pure functions and values only: no I/O except :func:`file_sha256`, no network.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Final

from tdxfl.errors import ConfigError, SealedFileError

__all__ = [
    "DIGEST_SIZE",
    "MAX_ROUND",
    "CheckpointRecord",
    "ResumeVerdict",
    "RollbackError",
    "check_resume",
    "file_sha256",
    "record_refusal",
    "validate_run_id",
]

DIGEST_SIZE: Final = 32
#: rounds are recorded as JSON integers and protobuf uint64: keep them exact in both
MAX_ROUND: Final = (1 << 53) - 1
_RUN_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class RollbackError(SealedFileError):
    """A genuine sealed file that is not the newest one: an older copy was put back.

    ``recorded_round`` and ``found_round`` are set for a checkpoint (the broker's record and the
    file found); the message names both. A ``SealedFileError`` (exit 5): the file authenticates,
    but it must not be used.
    """

    def __init__(self, message: str, *, recorded_round: int | None = None, found_round: int | None = None) -> None:
        super().__init__(message)
        self.recorded_round = recorded_round
        self.found_round = found_round


@dataclass(frozen=True)
class CheckpointRecord:
    """The latest checkpoint of run ``run_id``: its round and the SHA-256 of its sealed file.

    ``audit_seq`` is the key broker's audit-log entry holding the record (None before it is
    recorded); it is not part of the record's identity (``==`` ignores it).
    """

    run_id: str
    round: int
    sha256: bytes
    audit_seq: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        if isinstance(self.round, bool) or not isinstance(self.round, int) or not 0 <= self.round <= MAX_ROUND:
            raise ConfigError(f"checkpoint round must be an integer from 0 to {MAX_ROUND}, got {self.round!r}")
        if not isinstance(self.sha256, bytes) or len(self.sha256) != DIGEST_SIZE:
            raise ConfigError(f"checkpoint digest must be {DIGEST_SIZE} bytes (SHA-256 of the sealed file)")

    def describe(self) -> str:
        """``round N (sha256 abcd1234...)``: for messages."""
        return f"round {self.round} (sha256 {self.sha256.hex()[:16]}...)"


def validate_run_id(run_id: str) -> str:
    """``run_id`` if it is 1 to 128 of ``A-Z a-z 0-9 . _ : -`` (starting with a letter or digit);
    else ConfigError."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        shown = run_id[:64] if isinstance(run_id, str) else run_id
        raise ConfigError(
            f"invalid run id {shown!r}: use 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    return run_id


def record_refusal(latest: CheckpointRecord | None, offered: CheckpointRecord) -> str | None:
    """Why the broker refuses ``offered`` given the ``latest`` record of the same run, or None.

    Records only move forward: a lower round than the latest is refused, and so is the latest
    round again with another digest. The same record again is not refused (a retried report).
    """
    if latest is None:
        return None
    if offered.round < latest.round:
        return (
            f"run {offered.run_id!r}: round {offered.round} is older than round {latest.round} already recorded "
            "(records only move forward)"
        )
    if offered.round == latest.round and offered.sha256 != latest.sha256:
        return (
            f"run {offered.run_id!r}: round {latest.round} is already recorded with sha256 "
            f"{latest.sha256.hex()[:16]}..., this one has {offered.sha256.hex()[:16]}..."
        )
    return None


class ResumeVerdict(enum.Enum):
    """What :func:`check_resume` found (when it does not refuse)."""

    #: the checkpoint is exactly the one the broker recorded
    MATCHES = "matches"
    #: the checkpoint is newer than the broker's record: it was sealed, but the report did not
    #: reach the broker (a crash in between); report it now
    AHEAD = "ahead"
    #: the broker holds no record of this run (a new run, or its first checkpoint was never reported)
    NO_RECORD = "no-record"


def check_resume(record: CheckpointRecord | None, found_round: int, found_sha256: bytes) -> ResumeVerdict:
    """Judge the checkpoint a resuming PS found (its round and the SHA-256 of its sealed file)
    against the key broker's ``record`` of the run.

    Raises RollbackError, naming both rounds, when the checkpoint is older than the record or is
    the recorded round with another digest (an older or another genuine file put back under the
    latest one's name). A newer checkpoint is :attr:`ResumeVerdict.AHEAD` (genuine checkpoints
    newer than the record exist only when a report was lost: a host can put back old files, not
    make new ones); no record is :attr:`ResumeVerdict.NO_RECORD`.
    """
    if record is None:
        return ResumeVerdict.NO_RECORD
    if found_round < record.round:
        raise RollbackError(
            f"checkpoint of run {record.run_id!r} is round {found_round}, older than round {record.round} "
            "recorded at the key broker: an older checkpoint was put back; refusing to resume from it",
            recorded_round=record.round,
            found_round=found_round,
        )
    if found_round == record.round and found_sha256 != record.sha256:
        raise RollbackError(
            f"checkpoint of run {record.run_id!r} is round {found_round} with sha256 {found_sha256.hex()[:16]}..., "
            f"but the key broker recorded round {record.round} with sha256 {record.sha256.hex()[:16]}...: "
            "it is not the checkpoint that was sealed; refusing to resume from it",
            recorded_round=record.round,
            found_round=found_round,
        )
    return ResumeVerdict.MATCHES if found_round == record.round else ResumeVerdict.AHEAD


def file_sha256(path: str | os.PathLike[str]) -> bytes:
    """SHA-256 of the file at ``path`` (the digest a checkpoint record carries)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()
