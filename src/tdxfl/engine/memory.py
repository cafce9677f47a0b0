"""The in-memory fleet: the parameter server's loop and the workers' loops in one process, with
no network, for tests and simulation.

``InMemoryFleet`` is a ``Fleet`` over the same ``RoundState`` the attested fleet uses, so quorum,
timeout, refusal and rejoin behaviour is the same; ``connect(party)`` gives a worker its
``ServerConnection``. ``simulate`` runs a whole federation on it (workers in threads); under a
``ManualClock`` one can be simulated in one thread: ``on_publish`` callbacks schedule what the
simulated workers do, in simulated time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tdxfl.engine.clock import Clock
from tdxfl.engine.compression import Compressor
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import EventSink, JoinInfo, Model, PushResult, RunEnd, Update
from tdxfl.engine.kinds import RunStatus
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.rounds import FINISHED, RoundState, RoundStateFleet, log_event
from tdxfl.engine.server import RoundMetrics, RoundPlan, TrainingResult, run_rounds
from tdxfl.engine.strategy import Strategy
from tdxfl.engine.worker import WorkerResult, run_worker_loop
from tdxfl.errors import FederationError, LinkError, RecordError

__all__ = ["InMemoryConnection", "InMemoryFleet", "SimulatedWorker", "Simulation", "simulate"]

_PULL_WAIT_S = 30.0


class InMemoryFleet(RoundStateFleet[Model]):
    """Workers in this process, by name; implements ``Fleet``."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        strategy: Strategy,
        workers: Sequence[str],
        *,
        clock: Clock | None = None,
        on_event: EventSink = log_event,
        run_id: str = "memory",
    ) -> None:
        self.state: RoundState[Model] = RoundState(specs, strategy, clock=clock, on_event=on_event)
        self.workers = list(workers)
        #: what ``join`` tells workers (a test may change either to act out a PS restart)
        self.run_id, self.session = run_id, "1"
        self._subscribers: list[Callable[[Model], None]] = []

    def on_publish(self, callback: Callable[[Model], None]) -> None:
        """Call ``callback(model)`` after every publish (simulated workers react to it)."""
        self._subscribers.append(callback)

    def connect(self, party: str) -> InMemoryConnection:
        """A new connection for worker ``party``."""
        return InMemoryConnection(self, party)

    # -- Fleet (the rest is RoundStateFleet's) ------------------------------------------------
    def publish(self, version: int, weights: TensorSet) -> None:
        model = Model(version, weights)
        self.state.publish(version, model)
        for callback in self._subscribers:
            callback(model)


class InMemoryConnection:
    """One worker's connection to an ``InMemoryFleet``; implements ``ServerConnection``.

    Pulled tensors are copies (the PS changes its weights after ``retire``). ``close`` ends the
    connection: further calls raise LinkError, as a broken network connection would.
    """

    def __init__(self, fleet: InMemoryFleet, party: str) -> None:
        self._fleet = fleet
        self._state = fleet.state
        self.party = party
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise LinkError(f"{self.party}: connection closed")

    def join(self) -> JoinInfo:
        self._check_open()
        if self.party not in self._fleet.workers:
            raise FederationError(f"{self.party} is not a worker of this federation")
        self._state.join(self.party)
        return JoinInfo(
            self._fleet.workers.index(self.party), len(self._fleet.workers), self._fleet.run_id, self._fleet.session
        )

    def pull(self, after_version: int) -> Model | RunEnd:
        while True:
            self._check_open()
            with self._state.sending(
                self.party, after_version, _PULL_WAIT_S, self.close, lambda m: m.tensors.nbytes
            ) as sent:
                if sent is None:
                    continue
                if sent is FINISHED:
                    return self._state.run_end
                assert isinstance(sent, Model)
                return Model(sent.version, TensorSet(list(sent.tensors.specs), [a.copy() for a in sent.tensors.arrays]))

    def push(self, update: Update) -> PushResult:
        self._check_open()
        try:
            update.tensors.check_compatible(self._state.specs, check_dtype=False)
        except RecordError as e:
            self._state.reject(self.party, str(e))
            return PushResult(False, str(e))
        try:
            self._state.submit(self.party, update.info, update.tensors.cast_to(self._state.specs))
        except RecordError as e:  # stale, duplicate, wrong kind (not counted), or NaN (recorded by submit)
            return PushResult(False, str(e))
        return PushResult(True)

    def leave(self, reason: str) -> None:
        if not self.closed:  # a closed connection has nobody to tell, like a broken link
            self._state.leave(self.party, reason)

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class SimulatedWorker:
    """One worker of a ``simulate`` run: its name, model, strategy, local data and (optionally)
    its update compressor."""

    name: str
    model: ModelAdapter
    strategy: Strategy
    data: LocalData
    compressor: Compressor | None = None


@dataclass
class Simulation:
    """What a ``simulate`` run gave: the PS's result, its per-round metrics, each worker's result."""

    result: TrainingResult
    rounds: list[RoundMetrics]
    workers: dict[str, WorkerResult]


def simulate(
    server_model: ModelAdapter,
    strategy: Strategy,
    plan: RoundPlan,
    workers: Sequence[SimulatedWorker],
    test_data: tuple[np.ndarray, np.ndarray],
    *,
    worker_timeout: float = 120.0,
) -> Simulation:
    """A whole federation in this process: the PS's loop over an in-memory fleet, each worker's
    loop in a thread of its own, the global model evaluated on ``test_data`` every round. The
    first exception a worker raised is raised again here."""
    fleet = InMemoryFleet(server_model.specs(), strategy, [w.name for w in workers])
    results: dict[str, WorkerResult] = {}
    errors: list[BaseException] = []

    def work(w: SimulatedWorker) -> None:
        try:
            results[w.name] = run_worker_loop(
                w.name,
                lambda: fleet.connect(w.name),
                w.model,
                w.strategy,
                w.data,
                max_reconnects=0,
                compressor=w.compressor,
            )
        except BaseException as e:  # raised again below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,), name=f"simulated-{w.name}") for w in workers]
    for t in threads:
        t.start()
    seen: list[RoundMetrics] = []

    def evaluate(weights: TensorSet) -> tuple[float, float]:
        server_model.set_weights(weights.arrays)
        return server_model.evaluate(*test_data)

    start = TensorSet(server_model.specs(), server_model.get_weights())
    end = RunEnd(RunStatus.FAILED, "the parameter server's loop raised")
    try:
        result = run_rounds(fleet, strategy, start, plan, evaluate=evaluate, on_round=lambda m, w: seen.append(m))
        end = RunEnd(RunStatus.COMPLETED)
    finally:
        fleet.finish(end)
        for t in threads:
            t.join(worker_timeout)
    if errors:
        raise errors[0]
    return Simulation(result, seen, results)
