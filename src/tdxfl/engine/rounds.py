"""The parameter server's synchronisation point: one published model version at a time, the
updates that arrive for it, and the wait for a quorum.

Framework- and transport-neutral and thread-safe: a fleet's receiving side feeds it (``join``,
``sending``, ``check_offer``, ``submit``, ``reject``), the training loop drives it (``publish``,
``collect``, ``retire``, ``finish``). Time comes from a ``Clock``, so quorum and timeout
behaviour can be tested in simulated time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from tdxfl.engine.aggregators import Aggregator
from tdxfl.engine.clock import Clock, MonotonicClock
from tdxfl.engine.fleet import (
    PROGRESS_LOGGER,
    VAL_ACCURACY,
    VAL_LOSS,
    VAL_SAMPLES,
    EventKind,
    EventSink,
    FleetEvent,
    RunEnd,
    StepResult,
    UpdateInfo,
)
from tdxfl.engine.kinds import RunStatus
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.strategy import Strategy
from tdxfl.errors import FederationError, RecordError

__all__ = ["COMPLETED", "FINISHED", "RoundState", "RoundStateFleet", "log_event", "printable"]

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)
P = TypeVar("P")


class _Finished:
    def __repr__(self) -> str:
        return "FINISHED"


#: what ``sending`` hands out once training is over (``RoundState.run_end`` says how it ended)
FINISHED = _Finished()
#: the end of a run that did every round
COMPLETED = RunEnd(RunStatus.COMPLETED)


#: the training loss a worker reports with each update
TRAIN_LOSS = "loss"
#: the most validation samples one worker's evaluation may count for
MAX_VAL_SAMPLES = 1_000_000_000
#: the longest peer-given reason that is logged
MAX_REASON_CHARS = 500


def printable(text: str) -> str:
    """``text`` (e.g. a reason a peer sent) as one bounded, escaped line, safe to log."""
    return text[:MAX_REASON_CHARS].encode("unicode_escape").decode("ascii") + (
        "..." if len(text) > MAX_REASON_CHARS else ""
    )


def log_event(event: FleetEvent) -> None:
    """The default event sink: one progress line per join (INFO), refusal, drop or leave
    (WARNING), with the reason."""
    level = logging.INFO if event.kind is EventKind.JOINED else logging.WARNING
    reason = f": {printable(event.reason)}" if event.reason else ""
    progress.log(level, "worker %s %s%s", printable(event.party), event.kind.value, reason)


class RoundState(Generic[P]):
    """Holds the current model version (a payload ``P`` ready to send, e.g. a ``TensorSet`` or
    its wire form) and collects updates for it, weighted as ``strategy`` says."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        strategy: Strategy,
        *,
        clock: Clock | None = None,
        on_event: EventSink = log_event,
        notice_every_s: float = 10.0,
    ) -> None:
        self.specs = list(specs)
        self.strategy = strategy
        self._clock: Clock = clock or MonotonicClock()
        self._on_event = on_event
        #: how often a step that waits says for whom (progress log), in seconds
        self.notice_every_s = notice_every_s
        self._cond = threading.Condition()  # re-entrant: simulated-time events may call back in
        self.version = -1
        self._model: P | None = None
        self._retired = False  # the current model may be changing: send nothing until the next publish
        self._open = False  # the current step takes updates (from publish until collect returns)
        self._in_flight: dict[object, Callable[[], None]] = {}
        self._done = False
        #: how training ended (what pullers are told once it has)
        self.run_end = RunEnd(RunStatus.COMPLETED)
        self._acc: Aggregator | None = None
        self._contributors: list[str] = []
        self._rejected: dict[str, str] = {}
        self._metric_sums: dict[str, float] = {}
        self._loss_reports = 0
        self._val_sums: dict[str, float] = {}
        self._val_samples = 0
        self.active: set[str] = set()
        self.bytes_in = 0
        self.bytes_out = 0

    # -- training loop side ---------------------------------------------------------------
    def publish(self, version: int, model: P) -> None:
        """Make ``model`` version ``version`` and open collection for it.

        ``model`` may share memory with the caller's weights: the caller changes them only after
        ``retire``.
        """
        with self._cond:
            self.version = version
            self._model = model
            self._retired = False
            self._open = True
            if self._acc is None:
                self._acc = self.strategy.make_aggregator(self.specs)
            else:
                self._acc.reset()
            self._contributors = []
            self._rejected = {}
            self._metric_sums = {}
            self._loss_reports = 0
            self._val_sums = {}
            self._val_samples = 0
            self._cond.notify_all()

    def retire(self, timeout: float) -> int:
        """Stop sending the current model and wait until no send of it is in flight, so the
        caller may change the weights it shares; sends still going after ``timeout`` seconds
        (a stalled reader) are cancelled. Pulls wait for the next ``publish``. Returns how many
        sends were cancelled."""
        with self._cond:
            deadline = self._clock.now() + timeout
            self._retired = True
            while self._in_flight and self._clock.now() < deadline:
                self._clock.wait(self._cond, deadline - self._clock.now())
            stragglers = list(self._in_flight.values())
        for cancel in stragglers:
            log.warning("cancelling a model send that outlived the step timeout")
            cancel()
        with self._cond:
            while self._in_flight:
                self._clock.wait(self._cond, 1.0)
        return len(stragglers)

    def finish(self, end: RunEnd = COMPLETED) -> None:
        """Tell every waiting and future puller that training is over, and how it ended (the
        first ``finish`` decides)."""
        with self._cond:
            if not self._done:
                self.run_end = end
            self._done = True
            self._cond.notify_all()

    def wait_for_workers(self, count: int, timeout: float) -> None:
        """Block until ``count`` workers have joined; FederationError after ``timeout``."""
        with self._cond:
            deadline = self._clock.now() + timeout
            while len(self.active) < count:
                left = deadline - self._clock.now()
                if left <= 0:
                    raise FederationError(
                        f"only {len(self.active)} of the {count} required workers joined within {timeout:.0f}s"
                    )
                self._clock.wait(self._cond, left)

    def collect(self, quorum: int, timeout: float, *, fail_on_timeout: bool, grace: float) -> StepResult:
        """Wait for the current version's updates and return their weighted mean.

        Returns as soon as every active worker contributed. At ``timeout`` it goes on with at
        least ``quorum`` contributions, dropping the silent workers from the active set (a dropped
        worker is waited for again once it pushes an accepted update or joins again; pulling
        alone does not bring it back) — or raises FederationError when ``fail_on_timeout``. Below the
        quorum it waits up to ``grace`` more seconds for workers to (re)join, then raises.
        """
        with self._cond:
            start = self._clock.now()
            notice = self.notice_every_s  # when to say whom the step waits for
            while True:
                got = len(self._contributors)
                expected = self.active - set(self._rejected)
                # every live, well-behaved worker contributed (a refused update lowers the bar)
                # ... and the strategy has the updates it needs (a robust rule's minimum holds
                # whoever left or was refused)
                floor = self.strategy.min_updates
                if got >= max(1, floor, min(quorum, len(expected))) and set(self._contributors) >= expected:
                    break
                elapsed = self._clock.now() - start
                if elapsed >= timeout:
                    missing = sorted(expected - set(self._contributors))
                    if fail_on_timeout:
                        raise FederationError(
                            f'step {self.version}: no update from {missing} within {timeout:.0f}s (faults.on_timeout = "fail")'
                        )
                    if got >= max(quorum, floor):
                        log.warning(
                            "step %d: going on without %s (no update within %.0fs)", self.version, missing, timeout
                        )
                        self.active -= set(missing)
                        for party in missing:
                            self._on_event(FleetEvent(EventKind.DROPPED, party, f"no update within {timeout:.0f}s"))
                        break
                    if elapsed >= timeout + grace:
                        raise FederationError(
                            f"step {self.version}: only {got} update(s), quorum is {quorum}; silent workers: {missing}"
                        )
                    self._clock.wait(self._cond, timeout + grace - elapsed)
                else:
                    if elapsed >= notice:
                        self._waiting_notice(
                            sorted(expected - set(self._contributors)), elapsed, timeout, fail_on_timeout
                        )
                        notice += self.notice_every_s
                    self._clock.wait(self._cond, min(timeout, notice) - elapsed)
            assert self._acc is not None
            self._open = False  # a late update for this version would be counted nowhere
            metrics = {k: v / max(1, self._loss_reports) for k, v in self._metric_sums.items()}
            if self._val_samples:
                metrics.update({k: v / self._val_samples for k, v in self._val_sums.items()})
                metrics[VAL_SAMPLES] = float(self._val_samples)
            return StepResult(
                version=self.version,
                contributors=list(self._contributors),
                missing=sorted(self.active - set(self._contributors)),
                rejected=dict(self._rejected),
                mean=self._acc.mean(),
                metrics=metrics,
            )

    def _waiting_notice(self, missing: list[str], elapsed: float, timeout: float, fail: bool) -> None:
        then = "failing the run" if fail else "dropping it"
        for party in missing:
            progress.info(
                "step %d: waiting for %s: no update for %.0f s, %s at %.0f s",
                self.version,
                printable(party),
                elapsed,
                then,
                timeout,
            )

    # -- receiving side -------------------------------------------------------------------
    def join(self, party: str) -> None:
        """Mark ``party`` as a live worker that the next steps wait for."""
        with self._cond:
            self.active.add(party)
            self._cond.notify_all()
        self._on_event(FleetEvent(EventKind.JOINED, party))

    @contextlib.contextmanager
    def sending(
        self, party: str, after_version: int, timeout: float, cancel: Callable[[], None], nbytes: Callable[[P], int]
    ) -> Iterator[P | _Finished | None]:
        """The published model once version > ``after_version`` (``FINISHED`` when training is
        over, None after ``timeout``), in flight for the ``with`` block: ``retire`` waits for the
        block to end, or calls ``cancel()`` to end it. ``nbytes(model)`` counts what is sent."""
        token = object()
        model: P | _Finished
        with self._cond:
            deadline = self._clock.now() + timeout
            while not self._done and (self.version <= after_version or self._retired):
                left = deadline - self._clock.now()
                if left <= 0:
                    yield None
                    return
                self._clock.wait(self._cond, left)
            if self._done:
                model = FINISHED
            else:
                assert self._model is not None
                model = self._model
                self.bytes_out += nbytes(model)
            self._in_flight[token] = cancel
        try:
            yield model
        finally:
            with self._cond:
                del self._in_flight[token]
                self._cond.notify_all()

    def check_offer(self, party: str, info: UpdateInfo) -> None:
        """RecordError when ``party``'s update described by ``info`` would be refused now (wrong
        kind, stale, duplicate): checked before its data moves, and again by ``submit``."""
        with self._cond:
            self._check_offer(party, info)

    def _check_offer(self, party: str, info: UpdateInfo) -> None:
        want = self.strategy.update_kind
        if info.kind is not want:
            raise RecordError(f"this federation expects {want.value!r} updates, got {info.kind.value!r}")
        if info.version != self.version or not self._open:
            raise RecordError(f"stale update for version {info.version}; the current version is {self.version}")
        if party in self._contributors:
            raise RecordError(f"{party} already sent an update for version {info.version}")

    def submit(
        self,
        party: str,
        info: UpdateInfo,
        update: TensorSet,
        wire_bytes: int | None = None,
        *,
        finite_checked: bool = False,
    ) -> None:
        """Fold one worker's update into the current step, weighted by the strategy; RecordError
        with the reason if refused.

        ``wire_bytes`` is what the update took on the wire (default: its decoded size);
        ``finite_checked``: the caller already refused NaN and infinity.
        """
        with self._cond:
            self._check_offer(party, info)
            assert self._acc is not None
            try:
                self._acc.add(update, self.strategy.update_weight(info), finite_checked=finite_checked)
            except RecordError as e:
                self._refused(party, str(e))
                raise
            self._contributors.append(party)
            self._rejected.pop(party, None)
            self.active.add(party)
            self._add_metrics(info.metrics)
            self.bytes_in += update.nbytes if wire_bytes is None else wire_bytes
            self._cond.notify_all()

    def _add_metrics(self, metrics: Mapping[str, float]) -> None:
        """Sum the metrics a worker reported with its update: its training loss per update, its
        evaluation (``VAL_*``) weighted by its validation samples. Workers choose these numbers:
        only the known keys with finite, plausible values count (a loss >= 0, an accuracy in
        [0, 1], 1 to ``MAX_VAL_SAMPLES`` samples); anything else is ignored."""
        loss = metrics.get(TRAIN_LOSS)
        if loss is not None and math.isfinite(loss) and loss >= 0:
            self._metric_sums[TRAIN_LOSS] = self._metric_sums.get(TRAIN_LOSS, 0.0) + float(loss)
            self._loss_reports += 1
        n, v_loss, v_acc = metrics.get(VAL_SAMPLES), metrics.get(VAL_LOSS), metrics.get(VAL_ACCURACY)
        if n is None or v_loss is None or v_acc is None:
            return
        if not (
            math.isfinite(n)
            and n == int(n)
            and 1 <= n <= MAX_VAL_SAMPLES
            and math.isfinite(v_loss)
            and v_loss >= 0
            and 0 <= v_acc <= 1
        ):
            return
        self._val_sums[VAL_LOSS] = self._val_sums.get(VAL_LOSS, 0.0) + float(v_loss) * n
        self._val_sums[VAL_ACCURACY] = self._val_sums.get(VAL_ACCURACY, 0.0) + float(v_acc) * n
        self._val_samples += int(n)

    def leave(self, party: str, reason: str) -> None:
        """``party`` stopped, for ``reason``: the next steps no longer wait for it (until it joins
        again or pushes an accepted update)."""
        with self._cond:
            self.active.discard(party)
            self._cond.notify_all()
        self._on_event(FleetEvent(EventKind.LEFT, party, reason))

    def reject(self, party: str, reason: str) -> None:
        """Record that ``party``'s update for the current step was refused before submission."""
        with self._cond:
            self._refused(party, reason)

    def _refused(self, party: str, reason: str) -> None:
        self._rejected[party] = reason
        self._cond.notify_all()
        self._on_event(FleetEvent(EventKind.REFUSED, party, reason))


class RoundStateFleet(Generic[P]):
    """The ``Fleet`` methods every fleet delegates to its ``RoundState``; a fleet adds
    ``publish`` (what it hands out for a version) and how workers reach ``state``."""

    state: RoundState[P]

    def wait_for_workers(self, count: int, timeout: float) -> None:
        self.state.wait_for_workers(count, timeout)

    def collect(self, quorum: int, timeout: float, *, fail_on_timeout: bool, grace: float) -> StepResult:
        return self.state.collect(quorum, timeout, fail_on_timeout=fail_on_timeout, grace=grace)

    def retire(self, timeout: float) -> None:
        self.state.retire(timeout)

    def finish(self, end: RunEnd = COMPLETED) -> None:
        self.state.finish(end)

    @property
    def bytes_in(self) -> int:
        return self.state.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.state.bytes_out
