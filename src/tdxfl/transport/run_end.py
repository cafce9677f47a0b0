"""How a run ended, on the tensor link: the ``TENSOR_KIND_DONE`` header the PS answers a pull
with once training is over, and what a worker reads from it."""

from __future__ import annotations

from typing import Final

from tdxfl.engine.fleet import RunEnd
from tdxfl.engine.kinds import RunStatus
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.tensors import WireTensors, to_wire

__all__ = ["MAX_STATUS_REASON_CHARS", "done_message", "run_end_of"]

#: the longest reason a DONE header carries (a worker logs it escaped)
MAX_STATUS_REASON_CHARS: Final = 500

_TO_WIRE: Final = {
    RunStatus.COMPLETED: pb.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: pb.RUN_STATUS_FAILED,
    RunStatus.INTERRUPTED: pb.RUN_STATUS_INTERRUPTED,
}
_FROM_WIRE: Final = {v: k for k, v in _TO_WIRE.items()}


def done_message(end: RunEnd) -> WireTensors:
    """The DONE header (no tensors) that tells a worker training is over, and how it ended."""
    wire = to_wire(pb.TENSOR_KIND_DONE, -1)
    wire.header.status = _TO_WIRE[end.status]
    wire.header.status_reason = end.reason[:MAX_STATUS_REASON_CHARS]
    return wire


def run_end_of(header: pb.TensorHeader) -> RunEnd:
    """How the run ended, from a DONE header; an unknown or missing status counts as failed."""
    status = _FROM_WIRE.get(header.status)
    reason = header.status_reason[:MAX_STATUS_REASON_CHARS]
    if status is None:
        return RunEnd(RunStatus.FAILED, reason or "the parameter server gave no status")
    return RunEnd(status, reason)
