"""Protocol values of the round engine as enums: what an update is, how a federation trains."""

from __future__ import annotations

import enum

__all__ = ["Mode", "OnTimeout", "RunStatus", "UpdateKind"]


class UpdateKind(enum.Enum):
    """What a worker sends for one step."""

    #: per-step gradients of the trainable tensors (plus the worker's non-trainable state)
    GRADIENTS = "gradients"
    #: the worker's weights after local training
    WEIGHTS = "weights"


class Mode(enum.StrEnum):
    """How a federation trains (``training.mode``)."""

    #: every step, workers send gradients and the PS applies its optimizer to their mean
    SYNC_GRADIENTS = "sync-gradients"
    #: every round, workers train locally and the PS takes the sample-weighted mean of weights
    FEDAVG = "fedavg"


class OnTimeout(enum.StrEnum):
    """What the PS does when a worker's update is missing at the step timeout (``faults.on_timeout``)."""

    #: go on without it while the quorum holds
    CONTINUE = "continue"
    #: end the federation with an error
    FAIL = "fail"


class RunStatus(enum.StrEnum):
    """How a run ended, as the PS tells its workers (a worker exits 0 only for ``COMPLETED``)."""

    #: every round done, or the target accuracy reached
    COMPLETED = "completed"
    #: the PS could not go on (e.g. the quorum was lost)
    FAILED = "failed"
    #: the PS was stopped (SIGINT, SIGTERM); restarted, it resumes the run
    INTERRUPTED = "interrupted"
