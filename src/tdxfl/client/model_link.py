"""The worker's side of the tensor link to the parameter server: pull the model, push updates."""

from __future__ import annotations

from collections.abc import Mapping

from tdxfl.engine.compression import CompressedUpdate
from tdxfl.engine.fleet import RunEnd
from tdxfl.engine.records import TensorSet
from tdxfl.transport.link import TensorLink
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.run_end import run_end_of
from tdxfl.transport.tensors import Assembler, Header, decode_header, to_wire, to_wire_compressed


class ModelLink:
    """Pull and push over one tensor link (see ``LinkRequest`` in ``tdxfl.proto``)."""

    def __init__(self, link: TensorLink) -> None:
        self.link = link
        self._model: Assembler | None = None

    def pull(self, after_version: int) -> tuple[Header, TensorSet] | RunEnd:
        """The first model version after ``after_version`` (waits for it), or how the run ended
        once training is over.

        The tensors live in buffers that the next ``pull`` reuses (fresh memory would cost page
        faults on every step): use or copy them before pulling again. RecordError when the
        header is malformed, LinkError when the link breaks.
        """
        self.link.send(pb.LinkRequest(pull=pb.PullRequest(after_version=after_version)))
        message = self.link.recv(pb.TensorHeader)
        if message.kind == pb.TENSOR_KIND_DONE:
            return run_end_of(message)
        header = decode_header(message)
        if self._model is None or self._model.specs != header.specs:
            self._model = Assembler(header.specs)
        return header, self._model.fill(self.link.recv_into)

    def push(
        self,
        kind: pb.TensorKind,
        version: int,
        update: TensorSet | CompressedUpdate,
        *,
        num_samples: int,
        metrics: Mapping[str, float],
        wire_dtype: str | None = None,
    ) -> pb.PushReply:
        """Offer one update; once the server grants a receive slot, send its data.

        The reply says whether it was accepted and, if not, why (a refused grant is a refusal). A
        ``CompressedUpdate`` travels as its encoded bytes (``wire_dtype`` does not apply).
        """
        if isinstance(update, CompressedUpdate):
            wire = to_wire_compressed(kind, version, update, num_samples=num_samples, metrics=metrics)
        else:
            wire = to_wire(kind, version, update, num_samples=num_samples, metrics=metrics, wire_dtype=wire_dtype)
        self.link.send(pb.LinkRequest(push=wire.header))
        grant = self.link.recv(pb.PushGrant)
        if not grant.granted:
            return pb.PushReply(accepted=False, reason=grant.reason)
        self.link.send_raw(wire.views())
        return self.link.recv(pb.PushReply)

    def close(self) -> None:
        """Close the link."""
        self.link.close()
