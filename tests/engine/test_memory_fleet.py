"""The round engine on the in-memory fleet: the PS's loop and the workers' loops end to end, and
fault behaviour (crash, stall, rejoin, quorum) in simulated time.

The end-to-end tests run the real loops in threads (real time, synchronised only by the fleet);
the fault tests simulate the workers in the PS's own thread under a ``ManualClock``, so every
timeout is exact and nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from fedtools import SoftmaxRegression, blobs, federate_in_memory
from tdxfl.engine.clock import ManualClock
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import EventKind, FleetEvent, Model, Update, UpdateInfo
from tdxfl.engine.kinds import OnTimeout, UpdateKind
from tdxfl.engine.memory import InMemoryConnection, InMemoryFleet
from tdxfl.engine.optimizers import SGD, Adam
from tdxfl.engine.records import TensorSet
from tdxfl.engine.server import RoundMetrics, RoundPlan, TrainingResult, run_rounds
from tdxfl.engine.strategy import FedAvg, LocalTraining, Strategy, SyncGradients
from tdxfl.engine.worker import WorkerResult, run_worker_loop
from tdxfl.errors import FederationError, LinkError, Unavailable

WORKERS = ["w1", "w2"]


def plan(rounds: int = 5, **kw: object) -> RoundPlan:
    base: dict[str, object] = dict(
        rounds=rounds, quorum=2, step_timeout_s=30.0, on_timeout=OnTimeout.CONTINUE, join_timeout_s=60.0
    )
    base.update(kw)
    return RoundPlan(**base)  # type: ignore[arg-type]


def federate(
    strategy_for: Callable[[SoftmaxRegression], Strategy], rounds: int
) -> tuple[TrainingResult, list[WorkerResult], list[RoundMetrics]]:
    """A PS and two workers on disjoint halves of a blob data set, in threads."""
    x, y = blobs(600, seed=1)
    server_model = SoftmaxRegression(4, 3)
    workers = []
    for i, name in enumerate(WORKERS):
        model = SoftmaxRegression(4, 3)
        workers.append((name, model, strategy_for(model), LocalData(x[i::2], y[i::2], batch_size=32, seed=i)))
    result, rounds_seen, results = federate_in_memory(
        server_model, strategy_for(server_model), plan(rounds), workers, blobs(300, seed=2)
    )
    return result, results, rounds_seen


def test_sync_gradients_trains_end_to_end() -> None:
    result, workers, rounds = federate(
        lambda m: SyncGradients(Adam(0.05), m.trainable_mask(), steps_per_round=10), rounds=4
    )
    assert result.accuracy >= 0.9 and result.rounds == 4 and result.version == 40
    assert [w.steps for w in workers] == [40, 40] and all(w.rejected == 0 for w in workers)
    assert [m.contributors for m in rounds] == [20] * 4  # both workers, every step
    assert rounds[-1].loss < rounds[0].loss


def test_fedavg_trains_end_to_end() -> None:
    result, workers, rounds = federate(lambda m: FedAvg(LocalTraining(steps=10, learning_rate=0.5)), rounds=4)
    assert result.accuracy >= 0.9 and result.version == 4
    assert [w.steps for w in workers] == [4, 4]
    assert rounds[0].bytes_in > 0 and rounds[0].bytes_out > 0


# -- simulated workers, simulated time ---------------------------------------------------------


class SimWorker:
    """A worker simulated in the PS's thread: after each publish it answers after ``delay``
    simulated seconds with a gradient of ``value`` — or not at all while ``silent``."""

    def __init__(self, fleet: InMemoryFleet, clock: ManualClock, name: str, delay: float, value: float) -> None:
        self.fleet, self.clock, self.name, self.delay, self.value = fleet, clock, name, delay, value
        self.silent = False
        self.conn = fleet.connect(name)
        self.answers: list[tuple[int, bool, str]] = []
        fleet.on_publish(self._published)

    def _published(self, model: Model) -> None:
        if not self.silent:
            self.clock.call_later(self.delay, lambda: self._push(model.version))

    def _push(self, version: int) -> None:
        if self.conn.closed:
            return
        tensors = TensorSet(self.fleet.state.specs, [np.full(2, self.value, np.float32)])
        answer = self.conn.push(Update(UpdateInfo(UpdateKind.GRADIENTS, version, 1, {"loss": self.value}), tensors))
        self.answers.append((version, answer.accepted, answer.reason))


def sim_fleet(
    *workers: tuple[str, float, float], quorum: int = 1
) -> tuple[InMemoryFleet, ManualClock, dict[str, SimWorker], list[FleetEvent]]:
    clock, events = ManualClock(), []
    specs = TensorSet.from_arrays(["w"], [np.zeros(2, np.float32)]).specs
    fleet = InMemoryFleet(
        specs, SyncGradients(SGD(1.0), [True]), [w[0] for w in workers], clock=clock, on_event=events.append
    )
    sims = {name: SimWorker(fleet, clock, name, delay, value) for name, delay, value in workers}
    for sim in sims.values():
        sim.conn.join()
    return fleet, clock, sims, events


def run_sim(
    fleet: InMemoryFleet, clock: ManualClock, rounds: int, **kw: object
) -> tuple[TrainingResult, list[RoundMetrics], TensorSet]:
    weights = TensorSet.from_arrays(["w"], [np.zeros(2, np.float32)])
    seen: list[RoundMetrics] = []
    result = run_rounds(
        fleet,
        fleet.state.strategy,
        weights,
        plan(rounds, **{"quorum": 1, **kw}),
        evaluate=lambda w: (0.0, 0.0),
        on_round=lambda m, w: seen.append(m),
        clock=clock,
    )
    return result, seen, weights


def test_crashed_worker_is_dropped_and_training_goes_on() -> None:
    fleet, clock, sims, events = sim_fleet(("a", 1.0, 1.0), ("b", 2.0, 3.0))
    sims["b"].silent = True  # b crashed: it never answers again
    result, rounds, weights = run_sim(fleet, clock, rounds=3)
    assert [m.contributors for m in rounds] == [1, 1, 1]
    assert FleetEvent(EventKind.DROPPED, "b", "no update within 30s") in events
    # the first step waited the step timeout for b, the later ones only for a
    assert rounds[0].round_s == 30.0 and rounds[1].round_s == 1.0
    np.testing.assert_allclose(weights.arrays[0], -3.0)  # three SGD steps on a's gradient of 1


def test_stalled_worker_is_dropped_then_rejoins() -> None:
    fleet, clock, sims, events = sim_fleet(("a", 1.0, 1.0), ("b", 31.0, 3.0))  # b answers just after the timeout
    fleet.on_publish(lambda m: m.version == 1 and setattr(sims["b"], "delay", 2.0))  # then b recovers

    def rejoin(model: Model) -> None:
        if model.version == 2:  # b joins again and pulls the new version: it is waited for again
            sims["b"].conn.join()
            assert sims["b"].conn.pull(1) is not None

    fleet.on_publish(rejoin)
    result, rounds, weights = run_sim(fleet, clock, rounds=3)
    stale = [a for a in sims["b"].answers if not a[1]]
    assert stale and "stale update for version 0" in stale[0][2]  # its late update was refused
    assert [m.contributors for m in rounds] == [1, 1, 2]
    assert rounds[2].round_s == 2.0  # back in: the step waited for b, not the timeout
    np.testing.assert_allclose(weights.arrays[0], -1 - 1 - 2)  # a, a, then mean(a, b) = 2


def test_fail_on_timeout_ends_the_federation() -> None:
    fleet, clock, sims, _ = sim_fleet(("a", 1.0, 1.0), ("b", 2.0, 3.0))
    sims["b"].silent = True
    with pytest.raises(FederationError, match=r"no update from \['b'\]"):
        run_sim(fleet, clock, rounds=2, on_timeout=OnTimeout.FAIL)
    assert clock.now() == 30.0


def test_below_quorum_fails_after_the_grace() -> None:
    fleet, clock, sims, _ = sim_fleet(("a", 1.0, 1.0), ("b", 2.0, 3.0))
    sims["a"].silent = sims["b"].silent = True
    with pytest.raises(FederationError, match="only 0 update"):
        run_sim(fleet, clock, rounds=1, quorum=1, join_timeout_s=60.0)
    assert clock.now() == 90.0  # step timeout + grace


def test_refused_update_is_not_counted_and_its_worker_not_waited_for() -> None:
    fleet, clock, sims, events = sim_fleet(("a", 1.0, 1.0), ("b", 2.0, float("nan")))
    result, rounds, weights = run_sim(fleet, clock, rounds=2, quorum=2)
    assert all(m.contributors == 1 and m.rejected == 1 for m in rounds)
    assert rounds[0].round_s == 2.0  # no timeout: the refusal lowered the bar
    assert any(e.kind is EventKind.REFUSED and e.party == "b" and "NaN" in e.reason for e in events)
    assert sims["b"].answers[0][1] is False


def test_worker_loop_reconnects_a_broken_connection_then_gives_up() -> None:
    specs = TensorSet.from_arrays(["w"], [np.zeros(1, np.float32)]).specs
    fleet = InMemoryFleet(specs, SyncGradients(SGD(1.0), [True]), ["w1"])
    opened: list[InMemoryConnection] = []

    def connect() -> InMemoryConnection:
        conn = fleet.connect("w1")
        conn.close()  # every connection breaks at once
        opened.append(conn)
        return conn

    model = SoftmaxRegression(1, 2)
    with pytest.raises(Unavailable, match="lost the parameter server too often"):
        run_worker_loop(
            "w1",
            connect,
            model,
            SyncGradients(SGD(1.0), model.trainable_mask()),
            LocalData(*blobs(8, dim=1, classes=2), 4),
            max_reconnects=2,
        )
    assert len(opened) == 3
    with pytest.raises(LinkError):
        opened[0].pull(-1)


def test_unknown_worker_cannot_join() -> None:
    fleet = InMemoryFleet([], SyncGradients(SGD(1.0), []), ["w1"])
    with pytest.raises(FederationError, match="not a worker"):
        fleet.connect("mallory").join()


def test_workers_evaluate_each_round_on_their_own_data_weighted_by_samples() -> None:
    x, y = blobs(400, seed=1)
    vals = [blobs(30, seed=5), blobs(90, seed=6)]
    server_model = SoftmaxRegression(4, 3)
    strategy = FedAvg(LocalTraining(steps=5, learning_rate=0.5))
    fleet = InMemoryFleet(server_model.specs(), strategy, WORKERS)
    published: list[list[np.ndarray]] = []
    fleet.on_publish(lambda m: published.append([a.copy() for a in m.tensors.arrays]))

    def worker(i: int) -> None:
        data = LocalData(x[i::2], y[i::2], 16, i, *vals[i])
        run_worker_loop(
            WORKERS[i], lambda: fleet.connect(WORKERS[i]), SoftmaxRegression(4, 3), strategy, data, max_reconnects=0
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    seen: list[RoundMetrics] = []
    weights = TensorSet(server_model.specs(), server_model.get_weights())
    try:
        run_rounds(
            fleet, strategy, weights, plan(3), evaluate=lambda w: (0.0, 0.0), on_round=lambda m, w: seen.append(m)
        )
    finally:
        fleet.finish()
        for t in threads:
            t.join(60)
    probe = SoftmaxRegression(4, 3)
    for m, start in zip(seen, published):
        probe.set_weights(start)  # the model the round started from
        accs = [probe.evaluate(*v)[1] for v in vals]
        assert m.worker_val_samples == 120
        assert m.worker_val_accuracy == pytest.approx((30 * accs[0] + 90 * accs[1]) / 120)


class FailingModel(SoftmaxRegression):
    """The user's model code breaks on its third batch."""

    calls = 0

    def compute_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        FailingModel.calls += 1
        if FailingModel.calls == 3:
            raise FloatingPointError("loss diverged")
        return super().compute_gradients(x, y)


def test_a_worker_whose_training_fails_tells_the_ps_why_and_is_not_waited_for() -> None:
    x, y = blobs(200, seed=1)
    events: list[FleetEvent] = []
    strategy = SyncGradients(SGD(0.1), [True, True, False], steps_per_round=5)
    fleet = InMemoryFleet(SoftmaxRegression(4, 3).specs(), strategy, WORKERS, on_event=events.append)
    errors: list[BaseException] = []

    def worker(i: int, model: SoftmaxRegression) -> None:
        try:
            run_worker_loop(
                WORKERS[i], lambda: fleet.connect(WORKERS[i]), model, strategy, LocalData(x, y, 16, i), max_reconnects=0
            )
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=worker, args=(0, SoftmaxRegression(4, 3))),
        threading.Thread(target=worker, args=(1, FailingModel(4, 3))),
    ]
    for t in threads:
        t.start()
    weights = TensorSet(SoftmaxRegression(4, 3).specs(), SoftmaxRegression(4, 3).get_weights())
    try:
        # a step timeout far beyond the test's: only the leave lets the steps go on without w2
        result = run_rounds(
            fleet,
            strategy,
            weights,
            plan(2, quorum=1, step_timeout_s=3600.0),
            evaluate=lambda w: (0.0, 0.0),
            on_round=lambda m, w: None,
        )
    finally:
        fleet.finish()
        for t in threads:
            t.join(60)
    assert result.rounds == 2
    (left,) = [e for e in events if e.kind is EventKind.LEFT]
    assert left.party == "w2" and "training failed: FloatingPointError: loss diverged" in left.reason
    assert len(errors) == 1 and "w2: training failed" in str(errors[0])
