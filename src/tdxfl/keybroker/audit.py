"""Append-only, hash-chained audit log of the key broker (JSON lines): every key release and
refusal, and every checkpoint record of a parameter server.

Each line is one JSON object. A key release decision (the log's first kind of entry, which has no
``event`` field)::

    {"seq": 0, "time": "2025-..Z", "prev": <previous entry's hash, 64 zeros for the first>,
     "party": .., "role": .., "cert_fingerprint": .., "key": <key name>, "decision": "released" | "refused",
     "reason": .., "tee": .., "mrtd": .., "rtmrs": [4 x hex], "debug": bool | null,
     "hash": SHA-256 over the canonical JSON of all other fields except "mac",
     "mac": HMAC-SHA256(audit key, hash)  -- present when the log has a MAC key}

A checkpoint record (``event`` ``"checkpoint"``): the same ``seq``, ``time``, ``prev``, ``hash`` and
``mac``, and ``party``, ``role``, ``cert_fingerprint`` (who reported it), ``run_id``, ``round``,
``sha256`` (hex digest of the sealed checkpoint file), ``decision`` (``"recorded"`` or
``"refused"``) and ``reason``. The latest recorded entry per (party, run id) is the run's record;
it is rebuilt by replaying the log when the broker starts.

``verify_chain`` recomputes every entry's hash (an edited line fails at that line), checks that
``seq`` counts 0, 1, 2 ... and that ``prev`` is the previous entry's hash (a deleted, inserted or
reordered line fails at the first line out of place), and, given the MAC key, every MAC (so an
attacker who rewrites the whole chain without the keystore is caught). Only truncating the newest
entries cannot be seen from the file alone; compare ``head`` with a copy held elsewhere (the
broker logs the head after every append). Key bytes never appear in the log.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tdxfl.attestation.decisions import escaped
from tdxfl.attestation.interfaces import VerifiedEvidence
from tdxfl.errors import ConfigError, SealedFileError
from tdxfl.store.rollback import CheckpointRecord, record_refusal

__all__ = ["GENESIS", "AuditChainError", "AuditLog", "ChainStatus", "Event", "RecordOutcome", "verify_chain"]

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64


class Event(enum.Enum):
    """The kinds of audit entries (the ``event`` field; a key release has none)."""

    #: a key released or refused
    RELEASE = "release"
    #: a parameter server's checkpoint recorded or refused
    CHECKPOINT = "checkpoint"


_CHAIN: Final = ("seq", "time", "prev")
_FIELDS: Final[dict[Event, frozenset[str]]] = {
    Event.RELEASE: frozenset(
        (*_CHAIN, "party", "role", "cert_fingerprint", "key", "decision", "reason", "tee", "mrtd", "rtmrs", "debug")
    ),
    Event.CHECKPOINT: frozenset(
        (*_CHAIN, "event", "party", "role", "cert_fingerprint", "run_id", "round", "sha256", "decision", "reason")
    ),
}
_DECISIONS: Final = {Event.RELEASE: ("released", "refused"), Event.CHECKPOINT: ("recorded", "refused")}


@dataclass(frozen=True)
class RecordOutcome:
    """The answer to one checkpoint report: recorded or not, why, the audit entry holding the
    record or the refusal, and the run's latest record afterwards (None if it has none)."""

    recorded: bool
    reason: str
    audit_seq: int
    latest: CheckpointRecord | None


class AuditChainError(SealedFileError):
    """The audit log is not an unbroken chain; ``line`` (1-based) is where it breaks, ``reason`` how.

    A ``SealedFileError`` (a tampered or truncated file) that also says where, so that callers
    can point at the line without reading the message.
    """

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"audit log line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class ChainStatus:
    """A verified log: how many entries, the newest entry's hash, and whether MACs were checked."""

    entries: int
    head: str
    macs_checked: bool


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _mac(key: bytes, entry_hash: str) -> str:
    return hmac.new(key, b"tdxfl audit v1\x00" + entry_hash.encode(), hashlib.sha256).hexdigest()


class _Chain:
    """Verifies entries in order (fields, hash, sequence, link, MAC) and indexes what they record."""

    def __init__(self, mac_key: bytes | None) -> None:
        self.mac_key = mac_key
        self.entries = 0
        self.head = GENESIS
        #: (party, run id) -> the latest recorded checkpoint
        self.checkpoints: dict[tuple[str, str], CheckpointRecord] = {}

    def add(self, raw: bytes) -> dict[str, Any]:
        """Verify the next line ``raw`` (without its newline) and index it; AuditChainError if broken."""
        n = self.entries + 1
        try:
            entry = json.loads(raw)
        except ValueError:
            raise AuditChainError(n, "not valid JSON (edited or corrupted)") from None
        if not isinstance(entry, dict):
            raise AuditChainError(n, "not a JSON object (edited or corrupted)")
        try:
            event = Event(entry.get("event", Event.RELEASE.value))
        except ValueError:
            raise AuditChainError(n, f"unknown event {str(entry.get('event'))[:32]!r} (edited)") from None
        if event is Event.RELEASE and "event" in entry:
            raise AuditChainError(n, "fields missing or added (edited)")
        if set(entry) - {"mac"} != _FIELDS[event] | {"hash"}:
            raise AuditChainError(n, "fields missing or added (edited)")
        if entry["hash"] != _entry_hash(entry):
            raise AuditChainError(n, "entry hash does not match its contents (this line was edited)")
        if entry["seq"] != self.entries:
            raise AuditChainError(
                n,
                f"sequence number is {entry['seq']!r}, expected {self.entries} (entries deleted, inserted or reordered)",
            )
        if entry["prev"] != self.head:
            where = f"does not follow line {n - 1}" if n > 1 else "does not start the chain"
            raise AuditChainError(n, f"previous-entry hash {where} (entries deleted, inserted, reordered or replaced)")
        if self.mac_key is not None:
            mac = entry.get("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(self.mac_key, entry["hash"])):
                raise AuditChainError(
                    n, "MAC missing or invalid (entry forged or rewritten without the broker's audit key)"
                )
        if entry["decision"] not in _DECISIONS[event]:
            raise AuditChainError(n, f"decision {str(entry['decision'])[:32]!r} is not one of {event.value}'s")
        if event is Event.CHECKPOINT and entry["decision"] == "recorded":
            try:
                record = CheckpointRecord(
                    entry["run_id"], entry["round"], bytes.fromhex(entry["sha256"]), audit_seq=entry["seq"]
                )
            except (ConfigError, TypeError, ValueError):
                raise AuditChainError(n, "checkpoint record is malformed (edited)") from None
            self.checkpoints[(str(entry["party"]), record.run_id)] = record
        self.entries += 1
        self.head = entry["hash"]
        return entry


def _read_lines(data: bytes) -> list[bytes]:
    if data and not data.endswith(b"\n"):
        raise AuditChainError(data.count(b"\n") + 1, "last line is incomplete (torn write or truncation)")
    return data.split(b"\n")[:-1] if data else []


def _replay(path: Path, mac_key: bytes | None) -> _Chain:
    chain = _Chain(mac_key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return chain
    for raw in _read_lines(data):
        chain.add(raw)
    return chain


def verify_chain(path: str | os.PathLike[str], mac_key: bytes | None = None) -> ChainStatus:
    """Verify the whole log at ``path``; raise AuditChainError naming the first broken line.

    A missing file is an empty, valid log. With ``mac_key`` every entry must carry a valid MAC.
    """
    chain = _replay(Path(path), mac_key)
    return ChainStatus(chain.entries, chain.head, mac_key is not None)


class AuditLog:
    """Appends entries to the chained log at ``path``; verifies the existing chain when opened and
    rebuilds the checkpoint records from it.

    A broken existing chain raises AuditChainError: the broker refuses to start rather than
    extend a log that was tampered with (move it aside after investigating).
    """

    def __init__(self, path: str | os.PathLike[str], mac_key: bytes | None = None) -> None:
        self.path = Path(path)
        self._mac_key = mac_key
        self._lock = threading.Lock()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._chain = _replay(self.path, mac_key)

    @property
    def head(self) -> tuple[int, str]:
        """(number of entries, hash of the newest entry)."""
        with self._lock:
            return self._chain.entries, self._chain.head

    def _append_unlocked(self, event: Event, fields: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "seq": self._chain.entries,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "prev": self._chain.head,
        }
        if event is not Event.RELEASE:
            entry["event"] = event.value
        entry.update(fields)
        entry["hash"] = _entry_hash(entry)
        if self._mac_key is not None:
            entry["mac"] = _mac(self._mac_key, entry["hash"])
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(line + b"\n")
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._chain.add(line)
        return entry

    def append(
        self,
        *,
        party: str,
        role: str,
        cert_fingerprint: str,
        key: str,
        decision: str,
        reason: str,
        evidence: VerifiedEvidence | None = None,
        tee: str = "",
    ) -> dict[str, Any]:
        """Append one key release decision (``"released"`` or ``"refused"``), fsync it, return the entry.

        ``evidence`` supplies the measurements (MRTD, RTMRs, DEBUG) when the peer's quote was
        verified as genuine; otherwise they are recorded empty.
        """
        if decision not in _DECISIONS[Event.RELEASE]:
            raise ValueError(f"decision must be 'released' or 'refused', got {decision!r}")
        report = evidence.report if evidence is not None else None
        fields = {
            "party": party,
            "role": role,
            "cert_fingerprint": cert_fingerprint,
            "key": key,
            "decision": decision,
            "reason": reason,
            "tee": evidence.tee if evidence is not None else tee,
            "mrtd": report.mrtd.hex() if report else "",
            "rtmrs": [r.hex() for r in report.rtmrs] if report else [],
            "debug": report.debug if report else None,
        }
        with self._lock:
            entry = self._append_unlocked(Event.RELEASE, fields)
        log.info(
            "audit #%d %s key %r for %s (%s): head %s",
            entry["seq"],
            decision,
            key,
            escaped(party),
            escaped(role),
            entry["hash"],
        )
        return entry

    def record_checkpoint(
        self, *, party: str, role: str, cert_fingerprint: str, record: CheckpointRecord, refusal: str = ""
    ) -> RecordOutcome:
        """Make ``record`` the latest checkpoint of (``party``, its run), durably, unless refused.

        Refused when ``refusal`` gives a reason (e.g. the caller's role), or when the record is
        older than the run's latest (or the latest round with another digest): then the refusal is
        appended. The same record as the latest again appends nothing. The check and the append
        are one step: no other record comes between them.
        """
        with self._lock:
            latest = self._chain.checkpoints.get((party, record.run_id))
            reason = refusal or record_refusal(latest, record) or ""
            if not reason and latest is not None and latest == record:
                assert latest.audit_seq is not None
                return RecordOutcome(
                    True, f"run {record.run_id!r} {record.describe()} was already recorded", latest.audit_seq, latest
                )
            fields = {
                "party": party,
                "role": role,
                "cert_fingerprint": cert_fingerprint,
                "run_id": record.run_id,
                "round": record.round,
                "sha256": record.sha256.hex(),
                "decision": "refused" if reason else "recorded",
                "reason": reason or f"run {record.run_id!r} {record.describe()} recorded",
            }
            entry = self._append_unlocked(Event.CHECKPOINT, fields)
            current = self._chain.checkpoints.get((party, record.run_id))
        log.info(
            "audit #%d checkpoint %s for %s: %s",
            entry["seq"],
            entry["decision"],
            escaped(party),
            escaped(entry["reason"]),
        )
        return RecordOutcome(not reason, str(entry["reason"]), int(entry["seq"]), current)

    def latest_checkpoint(self, party: str, run_id: str) -> CheckpointRecord | None:
        """The latest checkpoint ``party`` recorded for ``run_id`` (with its ``audit_seq``), or None."""
        with self._lock:
            return self._chain.checkpoints.get((party, run_id))
