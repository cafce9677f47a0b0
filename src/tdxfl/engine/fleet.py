"""The interfaces the round loops run against, and the values that cross them.

The parameter server's loop (:mod:`.server`) drives a ``Fleet``: publish a model version,
collect the workers' updates for it under quorum and timeouts, retire it, finish. A worker's loop
(:mod:`.worker`) talks to the PS through a ``ServerConnection``: join, pull a model, push an
update. Two implementations of each: the attested one over the network (:mod:`tdxfl.server`,
:mod:`tdxfl.client`) and the in-memory one (:mod:`.memory`). Joins, drops and refusals are
reported as ``FleetEvent`` values.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tdxfl.engine.kinds import RunStatus, UpdateKind
from tdxfl.engine.records import TensorSet

__all__ = [
    "PROGRESS_LOGGER",
    "VAL_ACCURACY",
    "VAL_LOSS",
    "VAL_SAMPLES",
    "EventKind",
    "EventSink",
    "Fleet",
    "FleetEvent",
    "JoinInfo",
    "Model",
    "PushResult",
    "RunEnd",
    "ServerConnection",
    "StepResult",
    "Update",
    "UpdateInfo",
]


#: the logger of the lines a party shows at default verbosity: where it listens or connects,
#: joins and leaves with their reasons, waits for a silent worker, one line per round
PROGRESS_LOGGER = "tdxfl.progress"

#: metrics a worker reports with its first update of a round: its evaluation of the model it
#: received, on its own validation data (the PS averages them weighted by ``VAL_SAMPLES``)
VAL_LOSS, VAL_ACCURACY, VAL_SAMPLES = "val_loss", "val_accuracy", "val_samples"


@dataclass(frozen=True)
class UpdateInfo:
    """What an update says about itself, before its tensors move."""

    kind: UpdateKind
    version: int  # the global model version it was computed from
    num_samples: int  # samples behind it (the strategy may weight by it)
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """One worker's update for one step: its description and its tensors."""

    info: UpdateInfo
    tensors: TensorSet


@dataclass(frozen=True)
class Model:
    """A global model version as a worker receives it."""

    version: int
    tensors: TensorSet


@dataclass(frozen=True)
class PushResult:
    """The PS's answer to a pushed update."""

    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class JoinInfo:
    """What the PS tells a worker that joined: its index among the workers, how many there are,
    the run it serves (kept when the PS resumes it) and its session (new in every PS process)."""

    worker_index: int
    num_workers: int
    run_id: str = ""
    session: str = ""


@dataclass(frozen=True)
class RunEnd:
    """How training ended, as the PS says when a worker pulls after the last round."""

    status: RunStatus
    reason: str = ""

    def __str__(self) -> str:
        return self.status.value + (f": {self.reason}" if self.reason else "")


class EventKind(enum.Enum):
    """What happened to a worker."""

    JOINED = "joined"
    DROPPED = "dropped"  # silent past the step timeout
    REFUSED = "refused"  # an update was refused
    LEFT = "left"  # the worker said it stops, and why


@dataclass(frozen=True)
class FleetEvent:
    """A join, drop or refusal, with the reason."""

    kind: EventKind
    party: str
    reason: str = ""


EventSink = Callable[[FleetEvent], None]


@dataclass
class StepResult:
    """What one synchronous step collected."""

    version: int
    contributors: list[str]
    missing: list[str]
    rejected: dict[str, str]
    #: the weighted mean of the accepted updates, valid until the next publish (buffers are reused)
    mean: list[np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)


class Fleet(Protocol):
    """The workers as the parameter server's loop sees them."""

    def wait_for_workers(self, count: int, timeout: float) -> None:
        """Block until ``count`` workers have joined; FederationError after ``timeout`` seconds."""
        ...

    def publish(self, version: int, weights: TensorSet) -> None:
        """Offer ``weights`` as model ``version`` and open collection for it. The fleet may send
        them without a copy: the caller changes them only after ``retire``."""
        ...

    def collect(self, quorum: int, timeout: float, *, fail_on_timeout: bool, grace: float) -> StepResult:
        """Wait for the current version's updates (see ``RoundState.collect``)."""
        ...

    def retire(self, timeout: float) -> None:
        """Stop sending the current version; return once no send of it is in flight."""
        ...

    def finish(self, end: RunEnd = ...) -> None:
        """Tell every worker that training is over, and how it ended."""
        ...

    @property
    def bytes_in(self) -> int:
        """Update bytes received so far, as they travelled."""
        ...

    @property
    def bytes_out(self) -> int:
        """Model bytes sent so far."""
        ...


class ServerConnection(Protocol):
    """The parameter server as a worker's loop sees it."""

    def join(self) -> JoinInfo:
        """Announce this worker to the PS (FederationError when it refuses the worker's settings)."""
        ...

    def pull(self, after_version: int) -> Model | RunEnd:
        """The first model version after ``after_version`` (waits for it); how the run ended once
        training is over. The tensors may live in buffers that the next pull reuses."""
        ...

    def push(self, update: Update) -> PushResult:
        """Send one update; the answer says whether it was accepted and, if not, why."""
        ...

    def leave(self, reason: str) -> None:
        """Tell the PS that this worker stops, and why (e.g. its training code failed)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
