"""The in-memory fleet: the parameter server's loop and the workers' loops in one process, with
no network, for tests and simulation.

``InMemoryFleet`` is a ``Fleet`` over the same ``RoundState`` the attested fleet uses, so quorum,
timeout, refusal and rejoin behaviour is the same; ``connect(party)`` gives a worker its
``ServerConnection``. Under a ``ManualClock`` a whole federation can be simulated in one thread:
``on_publish`` callbacks schedule what the simulated workers do, in simulated time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tdxfl.engine.clock import Clock
from tdxfl.engine.fleet import EventSink, JoinInfo, Model, PushResult, Update
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.rounds import FINISHED, RoundState, RoundStateFleet, log_event
from tdxfl.engine.strategy import Strategy
from tdxfl.errors import FederationError, LinkError, RecordError

__all__ = ["InMemoryConnection", "InMemoryFleet"]

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
    ) -> None:
        self.state: RoundState[Model] = RoundState(specs, strategy, clock=clock, on_event=on_event)
        self.workers = list(workers)
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
        return JoinInfo(self._fleet.workers.index(self.party), len(self._fleet.workers))

    def pull(self, after_version: int) -> Model | None:
        while True:
            self._check_open()
            with self._state.sending(
                self.party, after_version, _PULL_WAIT_S, self.close, lambda m: m.tensors.nbytes
            ) as sent:
                if sent is None:
                    continue
                if sent is FINISHED:
                    return None
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
