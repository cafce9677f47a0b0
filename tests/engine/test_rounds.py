"""The PS's step synchronisation: quorum, timeouts, stale and duplicate updates, stalled sends.

Time is simulated (``ManualClock``): every wait returns at once with the clock moved on, and the
scheduled events (updates arriving, a publish) run in order. Nothing sleeps.
"""

from __future__ import annotations

import numpy as np
import pytest

from tdxfl.engine.clock import ManualClock
from tdxfl.engine.fleet import EventKind, FleetEvent, Model, UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.optimizers import SGD
from tdxfl.engine.records import TensorSet
from tdxfl.engine.rounds import FINISHED, RoundState
from tdxfl.engine.strategy import SyncGradients
from tdxfl.errors import FederationError, RecordError

SPECS = TensorSet.from_arrays(["w"], [np.zeros(4, np.float32)]).specs
GRADS = UpdateKind.GRADIENTS


def update(value: float) -> TensorSet:
    return TensorSet(SPECS, [np.full(4, value, np.float32)])


def info(version: int, kind: UpdateKind = GRADS, **metrics: float) -> UpdateInfo:
    return UpdateInfo(kind, version, 32, metrics)


def state(*workers: str, clock: ManualClock | None = None, events: list[FleetEvent] | None = None) -> RoundState[Model]:
    sink = events.append if events is not None else (lambda e: None)
    s: RoundState[Model] = RoundState(
        SPECS, SyncGradients(SGD(0.1), [True]), clock=clock or ManualClock(), on_event=sink
    )
    for w in workers:
        s.join(w)
    s.publish(0, Model(0, update(0.0)))
    return s


def nbytes(m: Model) -> int:
    return m.tensors.nbytes


def test_waits_for_every_active_worker() -> None:
    clock = ManualClock()
    s = state("a", "b", clock=clock)
    s.submit("a", info(0, loss=2.0), update(1))
    clock.call_at(3.0, lambda: s.submit("b", info(0, loss=4.0), update(3)))
    r = s.collect(2, 10, fail_on_timeout=True, grace=0)
    assert clock.now() == 3.0  # returned when b's update arrived, not at the timeout
    assert sorted(r.contributors) == ["a", "b"] and r.metrics["loss"] == 3.0
    np.testing.assert_allclose(r.mean[0], 2.0)


def test_silent_worker_dropped_after_timeout_when_quorum_met() -> None:
    clock, events = ManualClock(), []
    s = state("a", "b", clock=clock, events=events)
    s.submit("a", info(0), update(1))
    r = s.collect(1, 30, fail_on_timeout=False, grace=0)
    assert clock.now() == 30.0
    assert r.contributors == ["a"] and "b" not in s.active
    assert FleetEvent(EventKind.DROPPED, "b", "no update within 30s") in events


def test_dropped_worker_is_waited_for_again_only_once_it_rejoins() -> None:
    clock = ManualClock()
    s = state("a", "b", clock=clock)
    s.submit("a", info(0), update(1))
    s.collect(1, 30, fail_on_timeout=False, grace=0)  # b dropped
    s.publish(1, Model(1, update(0.0)))
    with s.sending("b", 0, 5, lambda: None, nbytes) as got:  # b pulls version 1 ...
        assert isinstance(got, Model) and got.version == 1
    assert "b" not in s.active  # ... which alone does not make every step wait for it again
    s.submit("a", info(1), update(1))
    assert s.collect(1, 30, fail_on_timeout=False, grace=0).contributors == ["a"] and clock.now() == 30.0
    s.publish(2, Model(2, update(0.0)))
    s.join("b")  # b joins again: it is waited for
    s.submit("a", info(2), update(1))
    clock.call_later(4.0, lambda: s.submit("b", info(2), update(3)))
    r = s.collect(1, 30, fail_on_timeout=False, grace=0)
    assert sorted(r.contributors) == ["a", "b"] and clock.now() == 34.0


def test_timeout_fails_when_configured() -> None:
    s = state("a", "b")
    s.submit("a", info(0), update(1))
    with pytest.raises(FederationError, match=r"no update from \['b'\]"):
        s.collect(1, 30, fail_on_timeout=True, grace=0)


def test_below_quorum_waits_the_grace_for_a_rejoin() -> None:
    clock = ManualClock()
    s = state("a", "b", "c", clock=clock)
    s.submit("a", info(0), update(1))
    clock.call_at(40.0, lambda: s.submit("c", info(0), update(5)))  # c arrives late, within the grace
    r = s.collect(2, 30, fail_on_timeout=False, grace=60)
    assert sorted(r.contributors) == ["a", "c"] and clock.now() == 40.0


def test_below_quorum_is_a_clear_error_after_the_grace() -> None:
    clock = ManualClock()
    s = state("a", "b", "c", clock=clock)
    s.submit("a", info(0), update(1))
    with pytest.raises(FederationError, match="only 1 update.*quorum is 2"):
        s.collect(2, 30, fail_on_timeout=False, grace=60)
    assert clock.now() == 90.0


def test_stale_duplicate_and_wrong_kind_refused() -> None:
    s = state("a")
    with pytest.raises(RecordError, match="stale"):
        s.submit("a", info(5), update(1))
    with pytest.raises(RecordError, match="expects 'gradients'"):
        s.submit("a", info(0, UpdateKind.WEIGHTS), update(1))
    s.submit("a", info(0), update(1))
    with pytest.raises(RecordError, match="already sent"):
        s.submit("a", info(0), update(1))


def test_rejected_worker_is_not_waited_for() -> None:
    events: list[FleetEvent] = []
    s = state("a", "b", events=events)
    s.submit("a", info(0), update(1))
    with pytest.raises(RecordError):
        s.submit("b", info(0), update(float("nan")))
    r = s.collect(2, 10, fail_on_timeout=True, grace=0)
    assert r.contributors == ["a"] and "b" in r.rejected
    assert [e.kind for e in events if e.party == "b"] == [EventKind.JOINED, EventKind.REFUSED]


def test_wait_for_workers_times_out_clearly() -> None:
    s: RoundState[Model] = RoundState(SPECS, SyncGradients(SGD(0.1), [True]), clock=ManualClock())
    s.join("a")
    with pytest.raises(FederationError, match="only 1 of the 2 required workers joined"):
        s.wait_for_workers(2, 120)


def test_pullers_get_the_published_version_then_finished() -> None:
    s = state("a")
    with s.sending("a", 0, 0.1, lambda: None, nbytes) as none:
        assert none is None  # nothing newer than version 0 yet
    with s.sending("a", -1, 0.1, lambda: None, nbytes) as got:
        assert isinstance(got, Model) and got.version == 0 and s.bytes_out == 16
    s.finish()
    with s.sending("a", 0, 5, lambda: None, nbytes) as done:
        assert done is FINISHED


def test_retire_cancels_a_stalled_send_and_holds_new_pulls() -> None:
    clock = ManualClock()
    s = state("a", "b", clock=clock)
    assert s.retire(5) == 0  # nothing in flight: returns at once
    s.publish(1, Model(1, update(1.0)))
    stalled = s.sending("a", 0, 5, lambda: stalled.__exit__(None, None, None), nbytes)
    assert isinstance(stalled.__enter__(), Model)  # a send blocked until its link is closed
    assert s.retire(20) == 1  # cancelled at the deadline
    assert clock.now() == 20.0
    clock.call_later(7.0, lambda: s.publish(2, Model(2, update(2.0))))
    with s.sending("b", 0, 60, lambda: None, nbytes) as got:
        # the retired version 1 was not handed out (its weights may be changing): b got 2
        assert isinstance(got, Model) and got.version == 2 and clock.now() == 27.0


def test_worker_reported_metrics_count_only_when_plausible() -> None:
    """Workers choose their metrics: a NaN loss, a claimed 10^12 validation samples or an
    accuracy above 1 must not distort what the PS records."""
    s = state("a", "b", "c", "d")
    s.submit("a", info(0, loss=2.0, val_loss=1.0, val_accuracy=0.5, val_samples=10), update(1))
    s.submit("b", info(0, loss=float("nan"), val_loss=0.0, val_accuracy=1.0, val_samples=1e12), update(1))
    s.submit("c", info(0, loss=4.0, val_loss=0.0, val_accuracy=7.0, val_samples=10), update(1))
    s.submit("d", info(0, loss=-1.0, val_loss=3.0, val_accuracy=1.0, val_samples=30), update(1))
    r = s.collect(4, 10, fail_on_timeout=True, grace=0)
    assert r.metrics["loss"] == 3.0  # a and c: the NaN and the negative loss are ignored
    assert r.metrics["val_samples"] == 40  # a and d
    assert r.metrics["val_accuracy"] == (10 * 0.5 + 30 * 1.0) / 40
    assert r.metrics["val_loss"] == (10 * 1.0 + 30 * 3.0) / 40


def test_a_robust_rule_minimum_holds_when_workers_leave() -> None:
    """Quorum 3 with a trimmed mean: two of three workers leaving must not let one update become
    the model; the PS waits out the timeout and grace, then fails clearly."""
    from tdxfl.engine.aggregators import RobustAggregation, TrimmedMean
    from tdxfl.engine.strategy import FedAvg, LocalTraining

    clock = ManualClock()
    strategy = FedAvg(LocalTraining(1, 0.1), robust=RobustAggregation(TrimmedMean(0.34), capacity=3, max_bytes=1 << 20))
    s: RoundState[Model] = RoundState(SPECS, strategy, clock=clock)
    for w in ("a", "b", "c"):
        s.join(w)
    s.publish(0, Model(0, update(0.0)))
    s.submit("a", UpdateInfo(UpdateKind.WEIGHTS, 0, 1), update(100))
    s.leave("b", "bye")
    s.leave("c", "bye")
    with pytest.raises(FederationError, match="only 1 update"):
        s.collect(3, 30, fail_on_timeout=False, grace=60)
    assert clock.now() == 90.0


def test_non_finite_validation_samples_are_ignored_not_a_crash() -> None:
    s = state("a")
    for bad in (float("nan"), float("inf")):
        s.publish(s.version + 1, Model(s.version + 1, update(0.0)))
        s.submit("a", info(s.version, loss=1.0, val_loss=0.5, val_accuracy=0.5, val_samples=bad), update(1))
        r = s.collect(1, 10, fail_on_timeout=True, grace=0)
        assert r.contributors == ["a"] and "val_samples" not in r.metrics


def test_an_update_arriving_after_its_step_closed_is_stale_and_rejoins_nobody() -> None:
    s = state("a", "b")
    s.submit("a", info(0), update(1))
    s.collect(1, 30, fail_on_timeout=False, grace=0)  # b dropped, step 0 closed
    with pytest.raises(RecordError, match="stale"):
        s.submit("b", info(0), update(3))
    assert "b" not in s.active and s.bytes_in == 16
