"""The worker's attested connection to the parameter server: the engine's ``ServerConnection``.

``connect_to_ps`` attests the PS and enrolls (RA-TLS, :func:`tdxfl.transport.attested.connect`),
retrying an unreachable PS with backoff, then opens the tensor link with the same pinned
identities. ``join`` goes over gRPC, models and updates over the link.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from tdxfl.attestation.interfaces import Attester
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.client.model_link import ModelLink
from tdxfl.engine.compression import CompressedUpdate
from tdxfl.engine.fleet import JoinInfo, Model, PushResult, RunEnd, Update
from tdxfl.engine.rounds import MAX_REASON_CHARS
from tdxfl.errors import FederationError, LinkError
from tdxfl.transport.attested import AttestedChannel, connect
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.retry import TRANSIENT_CODES, with_backoff
from tdxfl.transport.tensors import wire_kind

__all__ = ["AttestedConnection", "PsEndpoint", "connect_to_ps"]

_JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PsEndpoint:
    """The parameter server as a worker reaches it: its party name and three addresses."""

    name: str
    address: str
    enroll_address: str
    data_address: str


class AttestedConnection:
    """An attested gRPC channel and tensor link to the PS; implements ``ServerConnection``."""

    def __init__(self, channel: AttestedChannel, link: ModelLink, digest: str, wire_dtype: str | None) -> None:
        self._channel = channel
        self._link = link
        self._digest = digest
        self._wire_dtype = wire_dtype

    def join(self) -> JoinInfo:
        try:
            reply = pb_grpc.ParameterServerStub(self._channel.channel).Join(
                pb.JoinRequest(config_digest=self._digest), timeout=_JOIN_TIMEOUT_S
            )
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            if code in TRANSIENT_CODES:
                raise LinkError(f"Join failed: {details}") from None
            raise FederationError(f"the parameter server refused Join: {details}") from None
        return JoinInfo(reply.worker_index, reply.num_workers, reply.run_id, reply.session)

    def pull(self, after_version: int) -> Model | RunEnd:
        pulled = self._link.pull(after_version)
        if isinstance(pulled, RunEnd):
            return pulled
        header, tensors = pulled
        if header.kind != pb.TENSOR_KIND_MODEL:
            raise LinkError(f"the parameter server sent a {pb.TensorKind.Name(header.kind)} header for a pull")
        return Model(header.version, tensors)

    def push(self, update: Update) -> PushResult:
        info = update.info
        reply = self._link.push(
            wire_kind(info.kind),
            info.version,
            update if isinstance(update, CompressedUpdate) else update.tensors,
            num_samples=info.num_samples,
            metrics=info.metrics,
            wire_dtype=self._wire_dtype,
        )
        return PushResult(reply.accepted, reply.reason)

    def leave(self, reason: str) -> None:
        try:
            self._link.link.send(pb.LinkRequest(leave=pb.Leave(reason=reason[:MAX_REASON_CHARS])))
        except LinkError:
            pass  # the PS is gone already: nobody to tell

    def close(self) -> None:
        self._link.close()
        self._channel.close()


def connect_to_ps(
    party: str,
    attester: Attester,
    verifier: PeerVerifier,
    ps: PsEndpoint,
    *,
    digest: str,
    wire_dtype: str | None,
    retries: int,
    backoff_s: float,
    task_digest: bytes | None = None,
) -> AttestedConnection:
    """Attest the PS, enroll (our evidence claiming ``task_digest`` when given), open the tensor
    link; an unreachable PS is retried with exponential backoff (Unavailable after ``retries``), a
    refusal by either side is final (AttestationRefused)."""

    def attempt() -> AttestedConnection:
        channel = connect(
            party, "worker", attester, verifier, ps.name, ps.address, ps.enroll_address, task_digest=task_digest
        )
        try:
            link = ModelLink(channel.open_link(ps.data_address))
        except BaseException:
            channel.close()
            raise
        return AttestedConnection(channel, link, digest, wire_dtype)

    return with_backoff(attempt, what=f"parameter server {ps.address}", retries=retries, backoff_s=backoff_s)
