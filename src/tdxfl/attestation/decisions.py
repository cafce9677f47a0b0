"""The record of every attestation decision: who judged whom, on what, with what result.

Peers choose some of what a decision holds (their party name, text in a refusal reason), so the
log line escapes every non-printable character; the JSON-lines file escapes them as JSON does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("tdxfl.attestation")


def escaped(text: str) -> str:
    """``text`` with every non-printable character (line breaks, terminal escapes) written as a
    Python escape sequence, so a peer cannot forge or hide log lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True)
class Decision:
    """One verifier's verdict on one peer's evidence."""

    verifier: str
    peer: str
    result: str  # "accepted" | "refused"
    reason: str
    tee: str = ""
    mrtd: str = ""
    #: hex digest of the task code the peer's verified evidence claims ("" when none)
    task: str = ""
    time: float = 0.0

    @property
    def accepted(self) -> bool:
        """True for an accepted peer."""
        return self.result == "accepted"


class DecisionLog:
    """Keeps decisions in memory, logs each one, and appends it to a JSON-lines file if given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.decisions: list[Decision] = []

    def record(self, decision: Decision) -> Decision:
        """Store, log and persist ``decision``; return it."""
        if not decision.time:
            decision = Decision(**{**asdict(decision), "time": time.time()})
        level = logging.INFO if decision.accepted else logging.WARNING
        log.log(
            level,
            "attestation %s: %s judged %s (tee=%s mrtd=%s task=%s): %s",
            escaped(decision.result),
            escaped(decision.verifier),
            escaped(decision.peer),
            escaped(decision.tee) or "?",
            escaped(decision.mrtd[:16]) or "?",
            escaped(decision.task[:16]) or "-",
            escaped(decision.reason),
        )
        with self._lock:
            self.decisions.append(decision)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(decision)) + "\n")
        return decision

    @staticmethod
    def read(path: Path) -> list[Decision]:
        """Load decisions written by a DecisionLog to ``path``."""
        if not path.exists():
            return []
        return [Decision(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
