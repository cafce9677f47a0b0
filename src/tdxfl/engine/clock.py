"""Time as a parameter: the engine waits and times out through a ``Clock``.

``MonotonicClock`` is real time. ``ManualClock`` is simulated time for deterministic tests and
simulations: a wait returns at once with the clock moved forward to the earliest of its deadline
and the next scheduled event, which runs first. Nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "ManualClock", "MonotonicClock"]


class Clock(Protocol):
    """Reads the time and waits on a condition variable with a timeout."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        """Wait on ``cond`` (held by the caller) until notified or ``timeout`` seconds passed."""
        ...


class MonotonicClock:
    """Real time: ``time.monotonic`` and ``Condition.wait``."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        cond.wait(max(0.0, timeout))


class ManualClock:
    """Simulated time for a single-threaded simulation.

    ``call_at(t, fn)`` schedules ``fn`` at simulated time ``t``. A ``wait`` runs no real wait: it
    advances the clock to the earlier of its deadline and the next event, and runs that event
    (which may, e.g., submit an update and notify the waiter). The engine's condition variables
    are re-entrant, so events may call back into the object that waits.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward, running the events that fall due on the way."""
        self._run_until(self._now + seconds)

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the clock reaches ``t`` (at once on the next wait if ``t`` has passed)."""
        heapq.heappush(self._events, (t, next(self._seq), fn))

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` ``delay`` simulated seconds from now."""
        self.call_at(self._now + delay, fn)

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        deadline = self._now + max(0.0, timeout)
        if self._events and self._events[0][0] <= deadline:
            t, _, fn = heapq.heappop(self._events)
            self._now = max(self._now, t)
            fn()
        else:
            self._now = deadline

    def _run_until(self, t: float) -> None:
        while self._events and self._events[0][0] <= t:
            when, _, fn = heapq.heappop(self._events)
            self._now = max(self._now, when)
            fn()
        self._now = max(self._now, t)
