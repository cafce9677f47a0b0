"""RTMR3 and its event log: extension arithmetic, the extension rule, and the verifier's replay.

A TDX runtime measurement register (RTMR) starts at 48 zero bytes when the TD boots and can only
be *extended*: ``RTMR := SHA-384(RTMR || event)`` for a 48-byte ``event``. tdxfl extends RTMR3
with its task digest and carries the events in its evidence claims (``"rtmr3-log"``: the 48-byte
events extended into RTMR3 since boot, in order). A quote reports only the register's final
value, so a verifier cannot start from it; it replays the log from zeros and demands the result
equal the quoted RTMR3 (``check_rtmr3_log``), which proves every logged event was extended and
nothing else was.

A party knows the events only of what it extended itself, so it extends RTMR3 only where it can
give the whole log (``plan_extension``): at zero (nothing extended since boot), or not at all
when RTMR3 already holds exactly one extension by the same digest (an earlier start of the same
task in this boot). Any other value means other software extended RTMR3 without telling us; the
party then neither extends nor carries a log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from tdxfl.errors import AttestationError

__all__ = ["MAX_RTMR3_EVENTS", "RTMR_SIZE", "Extension", "check_rtmr3_log", "extend", "plan_extension", "replay"]

RTMR_SIZE = 48
#: the most events a verifier replays (tdxfl logs one; the cap bounds what a peer can make us hash)
MAX_RTMR3_EVENTS = 64
_ZERO = bytes(RTMR_SIZE)


def extend(register: bytes, event: bytes) -> bytes:
    """The value of an RTMR holding ``register`` after extending it with the 48-byte ``event``."""
    if len(register) != RTMR_SIZE or len(event) != RTMR_SIZE:
        raise ValueError(f"RTMR values and events are {RTMR_SIZE} bytes")
    return hashlib.sha384(register + event).digest()


def replay(events: Sequence[bytes]) -> bytes:
    """The RTMR value after extending a zeroed register with ``events`` in order."""
    value = _ZERO
    for event in events:
        value = extend(value, event)
    return value


@dataclass(frozen=True)
class Extension:
    """What a party does about RTMR3 for ``digest``: write it (``write``) or not, and the log it
    then carries (None: no log, the register holds events it cannot account for)."""

    write: bool
    log: tuple[bytes, ...] | None
    #: RTMR3 after the plan is carried out
    result: bytes


def plan_extension(current: bytes, digest: bytes) -> Extension:
    """The extension rule (module docstring) for an RTMR3 that now holds ``current``."""
    once = extend(_ZERO, digest)
    if hmac.compare_digest(current, _ZERO):
        return Extension(True, (digest,), once)
    if hmac.compare_digest(current, once):
        return Extension(False, (digest,), once)
    return Extension(False, None, current)


def check_rtmr3_log(events: Sequence[bytes], quoted: bytes, task: bytes | None) -> None:
    """Raise AttestationError unless ``events`` replay from zeros to the ``quoted`` RTMR3 and, when
    the claims carry a ``task`` digest, it is the last event."""
    replayed = replay(events)
    if not hmac.compare_digest(replayed, quoted):
        raise AttestationError(
            f"RTMR3 event log does not replay to the quoted RTMR3: its {len(events)} event(s) give "
            f"{replayed.hex()}, the quote reports {quoted.hex()} (the log was altered, or RTMR3 was "
            "extended by something that did not log it)"
        )
    if task is not None and not (events and hmac.compare_digest(events[-1], task)):
        last = events[-1].hex() if events else "none"
        raise AttestationError(f"the claimed task digest {task.hex()} is not the last RTMR3 event (last event: {last})")
