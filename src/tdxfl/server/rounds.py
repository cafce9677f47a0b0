"""The parameter server's synchronisation point: one published model version at a time, the
updates that arrive for it, and the wait for a quorum. Framework-neutral and thread-safe; the
gRPC service feeds it, the training loop drives it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tdxfl.core.records import RecordError, TensorSet, TensorSpec
from tdxfl.core.strategy import RoundAccumulator
from tdxfl.transport.tensors import WireTensors, to_wire

log = logging.getLogger(__name__)


class FederationError(RuntimeError):
    """Training cannot go on (e.g. fewer live workers than the quorum); the message says why."""


@dataclass
class StepResult:
    """What one synchronous step collected."""

    version: int
    contributors: list[str]
    missing: list[str]
    rejected: dict[str, str]
    mean: list  # list[np.ndarray], valid until the next publish (the buffers are reused)
    metrics: dict[str, float] = field(default_factory=dict)


#: the model ``sending`` hands out once training is over
DONE = to_wire("done", -1)


class RoundState:
    """Holds the current model version, ready to send, and collects updates for it."""

    def __init__(self, specs: Sequence[TensorSpec], update_kind: str) -> None:
        self.specs = list(specs)
        self.update_kind = update_kind
        self._cond = threading.Condition()
        self.version = -1
        self._model: WireTensors | None = None
        self._retired = False  # the current model may be changing: send nothing until the next publish
        self._in_flight: dict[object, Callable[[], None]] = {}
        self._done = False
        self._acc: RoundAccumulator | None = None
        self._contributors: list[str] = []
        self._rejected: dict[str, str] = {}
        self._metric_sums: dict[str, float] = {}
        self.active: set[str] = set()
        self.bytes_in = 0
        self.bytes_out = 0

    # -- training loop side ---------------------------------------------------------------
    def publish(self, version: int, model: WireTensors) -> None:
        """Make ``model`` version ``version`` and open collection for it.

        ``model`` may share memory with the caller's weights (``to_wire`` without a copy): the
        caller changes them only after ``retire``.
        """
        with self._cond:
            self.version = version
            self._model = model
            self._retired = False
            if self._acc is None:
                self._acc = RoundAccumulator(self.specs)
            else:
                self._acc.reset()
            self._contributors = []
            self._rejected = {}
            self._metric_sums = {}
            self._cond.notify_all()

    def retire(self, timeout: float) -> int:
        """Stop sending the current model and wait until no send of it is in flight, so the
        caller may change the weights it shares; sends still going after ``timeout`` seconds
        (a stalled reader) are cancelled. Pulls wait for the next ``publish``. Returns how many
        sends were cancelled."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._retired = True
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            stragglers = list(self._in_flight.values())
        for cancel in stragglers:
            log.warning("cancelling a model send that outlived the step timeout")
            cancel()
        with self._cond:
            while self._in_flight:
                self._cond.wait(1.0)
        return len(stragglers)

    def finish(self) -> None:
        """Tell every waiting and future puller that training is over."""
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for_workers(self, count: int, timeout: float) -> None:
        """Block until ``count`` workers have joined; FederationError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.active) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FederationError(
                        f"only {len(self.active)} of the {count} required workers joined within {timeout:.0f}s"
                    )
                self._cond.wait(left)

    def collect(self, quorum: int, timeout: float, *, fail_on_timeout: bool, grace: float) -> StepResult:
        """Wait for the current version's updates and return their weighted mean.

        Returns as soon as every active worker contributed. At ``timeout`` it goes on with at
        least ``quorum`` contributions, dropping the silent workers from the active set (they
        rejoin by pulling again) — or raises FederationError when ``fail_on_timeout``. Below the
        quorum it waits up to ``grace`` more seconds for workers to (re)join, then raises.
        """
        start = time.monotonic()
        with self._cond:
            while True:
                got = len(self._contributors)
                expected = self.active - set(self._rejected)
                # every live, well-behaved worker contributed (a refused update lowers the bar)
                if got >= max(1, min(quorum, len(expected))) and set(self._contributors) >= expected:
                    break
                elapsed = time.monotonic() - start
                if elapsed >= timeout:
                    missing = sorted(expected - set(self._contributors))
                    if fail_on_timeout:
                        raise FederationError(
                            f"step {self.version}: no update from {missing} within {timeout:.0f}s (faults.on_timeout = \"fail\")"
                        )
                    if got >= quorum:
                        log.warning("step %d: going on without %s (no update within %.0fs)", self.version, missing, timeout)
                        self.active -= set(missing)
                        break
                    if elapsed >= timeout + grace:
                        raise FederationError(
                            f"step {self.version}: only {got} update(s), quorum is {quorum}; "
                            f"silent workers: {missing}"
                        )
                self._cond.wait(0.05 if elapsed >= timeout else min(0.5, timeout - elapsed))
            assert self._acc is not None
            n = max(1, len(self._contributors))
            return StepResult(
                version=self.version,
                contributors=list(self._contributors),
                missing=sorted(self.active - set(self._contributors)),
                rejected=dict(self._rejected),
                mean=self._acc.mean(),
                metrics={k: v / n for k, v in self._metric_sums.items()},
            )

    # -- service side ---------------------------------------------------------------------
    def join(self, party: str) -> None:
        """Mark ``party`` as a live worker that the next steps wait for."""
        with self._cond:
            self.active.add(party)
            self._cond.notify_all()

    @contextlib.contextmanager
    def sending(self, party: str, after_version: int, timeout: float, cancel: Callable[[], None]) -> Iterator[WireTensors | None]:
        """The published model once version > ``after_version`` (``DONE`` when training is over,
        None after ``timeout``), in flight for the ``with`` block: ``retire`` waits for the
        block to end, or calls ``cancel()`` to end it."""
        deadline = time.monotonic() + timeout
        token = object()
        with self._cond:
            self.active.add(party)
            while not self._done and (self.version <= after_version or self._retired):
                left = deadline - time.monotonic()
                if left <= 0:
                    yield None
                    return
                self._cond.wait(left)
            if self._done:
                model = DONE
            else:
                assert self._model is not None
                model = self._model
                self.bytes_out += model.nbytes
            self._in_flight[token] = cancel
        try:
            yield model
        finally:
            with self._cond:
                del self._in_flight[token]
                self._cond.notify_all()

    def check_offer(self, party: str, kind: str, version: int) -> None:
        """RecordError when an update of ``kind`` for ``version`` from ``party`` would be refused
        now (wrong kind, stale, duplicate): checked before its data moves, and again by ``submit``."""
        with self._cond:
            self._check_offer(party, kind, version)

    def _check_offer(self, party: str, kind: str, version: int) -> None:
        if kind != self.update_kind:
            raise RecordError(f"this federation expects {self.update_kind!r} updates, got {kind!r}")
        if version != self.version:
            raise RecordError(f"stale update for version {version}; the current version is {self.version}")
        if party in self._contributors:
            raise RecordError(f"{party} already sent an update for version {version}")

    def submit(
        self,
        party: str,
        kind: str,
        version: int,
        update: TensorSet,
        weight: float,
        metrics: dict[str, float],
        wire_bytes: int | None = None,
        *,
        finite_checked: bool = False,
    ) -> None:
        """Fold one worker's update into the current step; RecordError with the reason if refused.

        ``wire_bytes`` is what the update took on the wire (default: its decoded size);
        ``finite_checked``: the caller already refused NaN and infinity (``Assembler.fill``).
        """
        with self._cond:
            self._check_offer(party, kind, version)
            assert self._acc is not None
            try:
                self._acc.add(update, weight, finite_checked=finite_checked)
            except RecordError as e:
                self._rejected[party] = str(e)
                self._cond.notify_all()
                raise
            self._contributors.append(party)
            self._rejected.pop(party, None)
            self.active.add(party)
            for k, v in metrics.items():
                self._metric_sums[k] = self._metric_sums.get(k, 0.0) + float(v)
            self.bytes_in += update.nbytes if wire_bytes is None else wire_bytes
            self._cond.notify_all()

    def reject(self, party: str, reason: str) -> None:
        """Record that ``party``'s update for the current step was refused before submission."""
        with self._cond:
            self._rejected[party] = reason
            self._cond.notify_all()
