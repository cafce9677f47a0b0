"""Attested gRPC over the wire: enrollment, pinning, replay and impersonation are refused."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import grpc
import pytest

from tdxfl.attestation.ratls import TlsIdentity, tls_name
from tdxfl.config import Federation
from tdxfl.errors import AttestationRefused
from tdxfl.transport.attested import AttestedServer, connect, fetch_server_certificate, role_table
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.wiring.party import PartyContext, party_context

WORKERS = ["worker-1", "worker-2"]


class Echo(pb_grpc.ParameterServerServicer):
    def __init__(self, server: AttestedServer) -> None:
        self.server = server

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        peer = self.server.peer_of(context)
        return pb.JoinReply(worker_index=WORKERS.index(peer.party))


@pytest.fixture
def served(make_federation: Callable[..., Federation]) -> Iterator[tuple[Federation, AttestedServer, PartyContext]]:
    fed = make_federation()
    ctx = party_context(fed, "ps")
    server = AttestedServer(
        "ps",
        ctx.attester,
        ctx.peer_verifier(fed.policy_for("workers")),
        "127.0.0.1:0",
        "127.0.0.1:0",
        roles=role_table([(w, "worker") for w in WORKERS]),
    )
    pb_grpc.add_ParameterServerServicer_to_server(Echo(server), server.main)
    server.start()
    yield (
        fed.with_ps_addresses(f"127.0.0.1:{server.port}", f"127.0.0.1:{server.enroll_port}", fed.ps.data_address),
        server,
        ctx,
    )
    server.stop(None)


def dial(fed: Federation, name: str) -> grpc.Channel:
    ctx = party_context(fed, name)
    return connect(
        name,
        "worker",
        ctx.attester,
        ctx.peer_verifier(fed.policy_for("ps")),
        "ps",
        fed.ps.address,
        fed.ps.enroll_address,
    ).channel


def test_mutual_attestation_then_rpc_identifies_the_peer(
    served: tuple[Federation, AttestedServer, PartyContext],
) -> None:
    fed, server, ps_ctx = served
    channel = dial(fed, "worker-1")
    assert pb_grpc.ParameterServerStub(channel).Join(pb.JoinRequest(), timeout=10).worker_index == 0
    assert [(d.verifier, d.peer, d.result) for d in ps_ctx.decisions.decisions] == [("ps", "worker-1", "accepted")]
    assert [p.party for p in server.enrolled()] == ["worker-1"]


def test_unenrolled_certificate_cannot_open_the_federation_port(
    served: tuple[Federation, AttestedServer, PartyContext],
) -> None:
    fed, server, ps_ctx = served
    rogue = TlsIdentity.create(ps_ctx.attester, "worker-2")  # genuine evidence, but never enrolled
    creds = grpc.ssl_channel_credentials(
        fetch_server_certificate(fed.ps.enroll_address), rogue.private_key_pem(), rogue.cert_pem
    )
    channel = grpc.secure_channel(fed.ps.address, creds, options=[("grpc.ssl_target_name_override", tls_name("ps"))])
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ParameterServerStub(channel).Join(pb.JoinRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails


def test_replayed_enrollment_certificate_is_refused(served: tuple[Federation, AttestedServer, PartyContext]) -> None:
    fed, server, ps_ctx = served
    w = party_context(fed, "worker-1")
    pem = fetch_server_certificate(fed.ps.enroll_address)
    ch = grpc.secure_channel(
        fed.ps.enroll_address,
        grpc.ssl_channel_credentials(pem),
        options=[("grpc.ssl_target_name_override", tls_name("ps"))],
    )
    stub = pb_grpc.EnrollmentStub(ch)
    nonce = stub.Attest(pb.AttestRequest(nonce=os.urandom(32))).challenge
    cert = TlsIdentity.create(w.attester, "worker-1", nonce=nonce).cert_pem
    first = stub.Enroll(pb.EnrollRequest(party="worker-1", role="worker", certificate_pem=cert))
    assert first.accepted, first.reason
    replay = stub.Enroll(pb.EnrollRequest(party="worker-1", role="worker", certificate_pem=cert))
    assert not replay.accepted and "replayed or expired nonce" in replay.reason
    stale = TlsIdentity.create(w.attester, "worker-1").cert_pem  # answers no challenge at all
    assert (
        "replayed or expired nonce"
        in stub.Enroll(pb.EnrollRequest(party="worker-1", role="worker", certificate_pem=stale)).reason
    )
    refused = [d for d in ps_ctx.decisions.decisions if d.result == "refused"]
    assert len(refused) == 2


def test_unknown_party_or_wrong_role_is_refused(served: tuple[Federation, AttestedServer, PartyContext]) -> None:
    fed, _, _ = served
    ctx = party_context(fed, "worker-1")
    with pytest.raises(AttestationRefused, match="may not enroll as 'ps'"):
        connect(
            "worker-1",
            "ps",
            ctx.attester,
            ctx.peer_verifier(fed.policy_for("ps")),
            "ps",
            fed.ps.address,
            fed.ps.enroll_address,
        )
    with pytest.raises(AttestationRefused, match="'mallory' may not enroll"):
        connect(
            "mallory",
            "worker",
            ctx.attester,
            ctx.peer_verifier(fed.policy_for("ps")),
            "ps",
            fed.ps.address,
            fed.ps.enroll_address,
        )


def test_worker_refuses_ps_with_wrong_measurement(
    served: tuple[Federation, AttestedServer, PartyContext], make_federation: Callable[..., Federation]
) -> None:
    fed, _, _ = served
    strict = make_federation(policy={"ps": {"tee": ["simulated"], "mrtd": ["00" * 48]}})
    ctx = party_context(strict, "worker-1")
    with pytest.raises(AttestationRefused, match="we refused ps: MRTD"):
        connect(
            "worker-1",
            "worker",
            ctx.attester,
            ctx.peer_verifier(strict.policy_for("ps")),
            "ps",
            fed.ps.address,
            fed.ps.enroll_address,
        )


def test_re_enrollment_replaces_the_old_certificate(served: tuple[Federation, AttestedServer, PartyContext]) -> None:
    fed, server, _ = served
    first = dial(fed, "worker-1")
    second = dial(fed, "worker-1")  # e.g. the worker restarted
    assert len(server.enrolled()) == 1
    assert pb_grpc.ParameterServerStub(second).Join(pb.JoinRequest(), timeout=10).worker_index == 0
    with pytest.raises(grpc.RpcError):
        pb_grpc.ParameterServerStub(first).Join(pb.JoinRequest(), timeout=5)
