"""Append-only, hash-chained audit log of every key release and refusal (JSON lines).

Each line is one JSON object::

    {"seq": 0, "time": "2025-..Z", "prev": <previous entry's hash, 64 zeros for the first>,
     "party": .., "role": .., "cert_fingerprint": .., "key": <key name>, "decision": "released" | "refused",
     "reason": .., "tee": .., "mrtd": .., "rtmrs": [4 x hex], "debug": bool | null,
     "hash": SHA-256 over the canonical JSON of all other fields except "mac",
     "mac": HMAC-SHA256(audit key, hash)  -- present when the log has a MAC key}

``verify_chain`` recomputes every entry's hash (an edited line fails at that line), checks that
``seq`` counts 0, 1, 2 ... and that ``prev`` is the previous entry's hash (a deleted, inserted or
reordered line fails at the first line out of place), and, given the MAC key, every MAC (so an
attacker who rewrites the whole chain without the keystore is caught). Only truncating the newest
entries cannot be seen from the file alone; compare ``head`` with a copy held elsewhere (the
broker logs the head after every append). Key bytes never appear in the log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tdxfl.attestation.interfaces import VerifiedEvidence
from tdxfl.errors import SealedFileError

__all__ = ["GENESIS", "AuditChainError", "AuditLog", "ChainStatus", "verify_chain"]

log = logging.getLogger(__name__)

GENESIS: Final = "0" * 64
_FIELDS: Final = (
    "seq",
    "time",
    "prev",
    "party",
    "role",
    "cert_fingerprint",
    "key",
    "decision",
    "reason",
    "tee",
    "mrtd",
    "rtmrs",
    "debug",
)


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


def verify_chain(path: str | os.PathLike[str], mac_key: bytes | None = None) -> ChainStatus:
    """Verify the whole log at ``path``; raise AuditChainError naming the first broken line.

    A missing file is an empty, valid log. With ``mac_key`` every entry must carry a valid MAC.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return ChainStatus(0, GENESIS, mac_key is not None)
    if data and not data.endswith(b"\n"):
        raise AuditChainError(data.count(b"\n") + 1, "last line is incomplete (torn write or truncation)")
    prev = GENESIS
    lines = data.split(b"\n")[:-1] if data else []
    for i, raw in enumerate(lines):
        n = i + 1
        try:
            entry = json.loads(raw)
        except ValueError:
            raise AuditChainError(n, "not valid JSON (edited or corrupted)") from None
        if not isinstance(entry, dict) or set(entry) - {"mac"} != set(_FIELDS) | {"hash"}:
            raise AuditChainError(n, "fields missing or added (edited)")
        if entry["hash"] != _entry_hash(entry):
            raise AuditChainError(n, "entry hash does not match its contents (this line was edited)")
        if entry["seq"] != i:
            raise AuditChainError(
                n, f"sequence number is {entry['seq']!r}, expected {i} (entries deleted, inserted or reordered)"
            )
        if entry["prev"] != prev:
            where = f"does not follow line {n - 1}" if n > 1 else "does not start the chain"
            raise AuditChainError(n, f"previous-entry hash {where} (entries deleted, inserted, reordered or replaced)")
        if mac_key is not None:
            mac = entry.get("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(mac_key, entry["hash"])):
                raise AuditChainError(
                    n, "MAC missing or invalid (entry forged or rewritten without the broker's audit key)"
                )
        prev = entry["hash"]
    return ChainStatus(len(lines), prev, mac_key is not None)


class AuditLog:
    """Appends entries to the chained log at ``path``; verifies the existing chain when opened.

    A broken existing chain raises AuditChainError: the broker refuses to start rather than
    extend a log that was tampered with (move it aside after investigating).
    """

    def __init__(self, path: str | os.PathLike[str], mac_key: bytes | None = None) -> None:
        self.path = Path(path)
        self._mac_key = mac_key
        self._lock = threading.Lock()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = verify_chain(self.path, mac_key)
        self._seq = status.entries
        self._head = status.head

    @property
    def head(self) -> tuple[int, str]:
        """(number of entries, hash of the newest entry)."""
        with self._lock:
            return self._seq, self._head

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
        """Append one decision (``"released"`` or ``"refused"``), fsync it, return the entry.

        ``evidence`` supplies the measurements (MRTD, RTMRs, DEBUG) when the peer's quote was
        verified as genuine; otherwise they are recorded empty.
        """
        if decision not in ("released", "refused"):
            raise ValueError(f"decision must be 'released' or 'refused', got {decision!r}")
        report = evidence.report if evidence is not None else None
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._seq,
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                "prev": self._head,
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
            entry["hash"] = _entry_hash(entry)
            if self._mac_key is not None:
                entry["mac"] = _mac(self._mac_key, entry["hash"])
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq += 1
            self._head = entry["hash"]
        log.info("audit #%d %s key %r for %s (%s): head %s", entry["seq"], decision, key, party, role, entry["hash"])
        return entry
