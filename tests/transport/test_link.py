"""The tensor link: tensors between attested parties over pinned, mutual TLS 1.3."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from fedtools import eventually
from tdxfl.attestation.ratls import TlsIdentity, tls_name
from tdxfl.client.model_link import ModelLink
from tdxfl.config import Federation
from tdxfl.engine.fleet import RunEnd
from tdxfl.engine.kinds import RunStatus
from tdxfl.engine.records import TensorSet
from tdxfl.engine.rounds import RoundState
from tdxfl.engine.strategy import FedAvg, LocalTraining
from tdxfl.errors import LinkError, RecordError
from tdxfl.server.fleet import AttestedFleet
from tdxfl.transport.attested import AttestedChannel, connect, split_address
from tdxfl.transport.link import TlsStream, open_link
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.tensors import Assembler, WireTensors, decode_header, to_wire
from tdxfl.wiring.party import PartyContext, party_context
from tdxfl.wiring.ps import attested_fleet

MODEL = pb.TENSOR_KIND_MODEL
WEIGHTS, GRADIENTS = pb.TENSOR_KIND_WEIGHTS, pb.TENSOR_KIND_GRADIENTS


class WireReader:
    """A ``read_into`` over a tensor set's wire bytes, as a link would deliver them."""

    def __init__(self, wire: WireTensors) -> None:
        self.data = memoryview(b"".join(bytes(v) for v in wire.views()))
        self.pos = 0

    def __call__(self, views: Sequence[memoryview]) -> None:
        for v in views:
            v.cast("B")[:] = self.data[self.pos : self.pos + len(v)]
            self.pos += len(v)

    def left(self) -> int:
        return len(self.data) - self.pos


def big_set(seed: int) -> TensorSet:
    """~105 MB of float32 in shapes like ResNet-50's largest layers, plus odd small ones."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 512, 512), (1, 1, 1024, 2048), (2048, 10), (7,), (3, 3, 256, 256), (22_000_000,)]
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    return TensorSet.from_arrays([f"t{i}" for i in range(len(arrays))], arrays)


@dataclass
class Ps:
    fed: Federation  # with the ports the PS bound
    ctx: PartyContext
    fleet: AttestedFleet

    @property
    def rounds(self) -> RoundState[WireTensors]:
        return self.fleet.state


def start_ps(fed: Federation, *, max_handshakes: int = 64) -> Ps:
    """The PS's attested fleet (FedAvg: updates are weights) for ``big_set`` models, on port 0."""
    ctx = party_context(fed, "ps")
    fleet = attested_fleet(fed, ctx, big_set(0).specs, FedAvg(LocalTraining(1, 0.1)), max_handshakes=max_handshakes)
    a = fleet.addresses
    fleet.start()
    return Ps(fed.with_ps_addresses(a.address, a.enroll_address, a.data_address), ctx, fleet)


@pytest.fixture
def ps(make_federation: Callable[..., Federation]) -> Iterator[Ps]:
    running = start_ps(make_federation())
    yield running
    running.fleet.stop(linger=0)


def enroll(ps: Ps, name: str) -> AttestedChannel:
    ctx = party_context(ps.fed, name)
    policy = ps.fed.policy_for("ps")
    return connect(
        name, "worker", ctx.attester, ctx.peer_verifier(policy), "ps", ps.fed.ps.address, ps.fed.ps.enroll_address
    )


def test_header_validation_refuses_bad_dtypes_and_sizes() -> None:
    ts = TensorSet.from_arrays(["a", "b"], [np.arange(5, dtype=np.float32), np.ones((3, 7), np.float64)])
    wire = to_wire(WEIGHTS, 4, ts, num_samples=3)
    header = decode_header(wire.header)
    assert (header.kind, header.version, header.num_samples, header.specs) == (WEIGHTS, 4, 3, ts.specs)
    assert wire.nbytes == ts.nbytes and [bytes(v) for v in wire.views()] == [a.tobytes() for a in ts.arrays]
    bad = pb.TensorHeader()
    bad.CopyFrom(wire.header)
    bad.total_bytes = 1
    with pytest.raises(RecordError, match="header says"):
        decode_header(bad)
    with pytest.raises(RecordError, match="dtype"):
        decode_header(pb.TensorHeader(kind=WEIGHTS, tensors=[pb.TensorSpec(name="x", dtype="object", shape=[1])]))
    with pytest.raises(RecordError, match="negative"):
        decode_header(pb.TensorHeader(kind=WEIGHTS, tensors=[pb.TensorSpec(name="x", dtype="uint8", shape=[-1])]))
    with pytest.raises(RecordError, match="exceeds"):
        decode_header(
            pb.TensorHeader(
                kind=WEIGHTS, tensors=[pb.TensorSpec(name="x", dtype="float64", shape=[1 << 31])], total_bytes=8 << 31
            )
        )


@pytest.mark.parametrize("wire_dtype, atol", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_half_precision_wire_dtypes_halve_bytes_and_keep_nan_checks(wire_dtype: str, atol: float) -> None:
    ts = TensorSet.from_arrays(["a", "n"], [np.linspace(-1, 1, 1000, dtype=np.float32), np.arange(3, dtype=np.int64)])
    wire = to_wire(GRADIENTS, 0, ts, wire_dtype=wire_dtype)
    assert (
        wire.nbytes == 2000 + 24
        and wire.header.tensors[0].dtype == wire_dtype
        and wire.header.tensors[1].dtype == "int64"
    )

    out = Assembler(decode_header(wire.header).specs).fill(WireReader(wire), check_finite=True).cast_to(ts.specs)
    assert out.arrays[0].dtype == np.float32
    np.testing.assert_allclose(out.arrays[0], ts.arrays[0], atol=atol)
    ts.arrays[0][500] = np.nan
    wire = to_wire(GRADIENTS, 0, ts, wire_dtype=wire_dtype)
    with pytest.raises(RecordError, match="NaN"):
        Assembler(decode_header(wire.header).specs).fill(WireReader(wire), check_finite=True)


def test_100mb_model_and_update_roundtrip_over_the_link(ps: Ps) -> None:
    model = big_set(0)
    assert model.nbytes >= 100 * 2**20
    channel = enroll(ps, "worker-1")
    link = ModelLink(channel.open_link(ps.fed.ps.data_address))
    ps.rounds.publish(0, to_wire(MODEL, 0, model))
    header, pulled = link.pull(-1)
    assert header.version == 0
    for x, y in zip(model.arrays, pulled.arrays):
        np.testing.assert_array_equal(x, y)
    update = big_set(1)
    collected: dict[str, object] = {}
    t = threading.Thread(target=lambda: collected.update(r=ps.rounds.collect(1, 60, fail_on_timeout=True, grace=0)))
    ps.rounds.join("worker-1")
    t.start()
    reply = link.push(WEIGHTS, 0, update, num_samples=5, metrics={"loss": 0.5})
    assert reply.accepted, reply.reason
    t.join(60)
    result = collected["r"]
    for x, y in zip(update.arrays, result.mean):  # type: ignore[attr-defined]
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert ps.rounds.bytes_in == update.nbytes and ps.rounds.bytes_out >= model.nbytes
    ps.rounds.finish()
    end = link.pull(0)
    assert isinstance(end, RunEnd) and end.status is RunStatus.COMPLETED
    link.close()
    channel.close()


def test_bad_updates_are_refused_with_reasons_and_the_link_survives_them(ps: Ps) -> None:
    model = big_set(0)
    channel = enroll(ps, "worker-1")
    link = ModelLink(channel.open_link(ps.fed.ps.data_address))
    ps.rounds.publish(0, to_wire(MODEL, 0, model))
    _, weights = link.pull(-1)
    wrong = TensorSet.from_arrays([s.name for s in weights.specs], [np.zeros(3, np.float32)] * len(weights.specs))
    assert "shape" in link.push(WEIGHTS, 0, wrong, num_samples=1, metrics={}).reason
    renamed = TensorSet.from_arrays(["x"] * len(weights.specs), weights.arrays)
    assert "expected" in link.push(WEIGHTS, 0, renamed, num_samples=1, metrics={}).reason
    nan = TensorSet(weights.specs, [np.full_like(a, np.nan) for a in weights.arrays])
    assert "NaN" in link.push(WEIGHTS, 0, nan, num_samples=1, metrics={}).reason
    sent = ps.rounds.bytes_in
    assert "stale" in link.push(WEIGHTS, 7, weights, num_samples=1, metrics={}).reason
    assert "expects 'weights'" in link.push(GRADIENTS, 0, weights, num_samples=1, metrics={}).reason
    assert link.push(WEIGHTS, 0, weights, num_samples=1, metrics={}).accepted  # same link, still good
    assert "already sent" in link.push(WEIGHTS, 0, weights, num_samples=1, metrics={}).reason
    assert ps.rounds.bytes_in == sent + weights.nbytes  # refused offers moved no data
    step = ps.rounds.collect(1, 5, fail_on_timeout=True, grace=0)
    assert step.contributors == ["worker-1"] and "worker-1" not in step.rejected  # stale offers blame nobody
    link.close()
    channel.close()


def test_an_update_that_breaks_off_is_a_leave_not_a_refusal_and_a_new_link_works(ps: Ps) -> None:
    model = big_set(0)
    channel, honest = enroll(ps, "worker-1"), enroll(ps, "worker-2")
    ps.rounds.publish(0, to_wire(MODEL, 0, model))
    link = channel.open_link(ps.fed.ps.data_address)
    ModelLink(link).pull(-1)
    wire = to_wire(WEIGHTS, 0, model, num_samples=1)
    link.send(pb.LinkRequest(push=wire.header))
    assert link.recv(pb.PushGrant).granted
    link.send_raw([wire.views()[0]])  # a part of the data, then the worker "crashes"
    link.close()
    good = ModelLink(honest.open_link(ps.fed.ps.data_address))
    _, weights = good.pull(-1)
    assert good.push(WEIGHTS, 0, weights, num_samples=1, metrics={}).accepted
    step = ps.rounds.collect(1, 10, fail_on_timeout=True, grace=0)  # waits for worker-1's outcome
    # a crash mid-update is no refused update: worker-1 left, and the step does not wait for it
    assert step.contributors == ["worker-2"] and step.rejected == {} and "worker-1" not in ps.rounds.active
    again = ModelLink(channel.open_link(ps.fed.ps.data_address))
    assert again.pull(-1)[0].version == 0
    for c in (again, good):
        c.close()
    channel.close()
    honest.close()


def test_garbage_messages_close_the_link(ps: Ps) -> None:
    channel = enroll(ps, "worker-1")
    for garbage in (b"\x00\x00\x00\x05\xff\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"):
        link = channel.open_link(ps.fed.ps.data_address)
        link.stream.sendall(memoryview(garbage))
        with pytest.raises(LinkError, match="closed"):
            link.recv(pb.PushGrant)
        link.close()
    channel.close()


def test_unenrolled_certificate_is_refused_and_logged(ps: Ps) -> None:
    channel = enroll(ps, "worker-1")
    rogue = TlsIdentity.create(ps.ctx.attester, "worker-2")  # genuine evidence, but never enrolled
    ctx = rogue.tls13_context(server_side=False, trusted_pem=channel.server_cert_pem)
    pinned = ssl.PEM_cert_to_DER_cert(channel.server_cert_pem.decode())
    link = open_link(split_address(ps.fed.ps.data_address), ctx, tls_name("ps"), pinned)
    with pytest.raises(
        LinkError, match="refused the connection"
    ):  # TLS 1.3: the server's verdict arrives after the client's handshake
        link.send(pb.LinkRequest(pull=pb.PullRequest(after_version=-1)))
        link.recv(pb.TensorHeader)
    link.close()
    assert eventually(lambda: any(d.result == "refused" for d in ps.ctx.decisions.decisions), timeout=5)
    refusals = [d for d in ps.ctx.decisions.decisions if d.result == "refused"]
    assert "tensor link" in refusals[-1].peer and "certificate" in refusals[-1].reason
    channel.close()


def test_old_certificate_of_a_re_enrolled_party_is_refused(ps: Ps) -> None:
    first = enroll(ps, "worker-1")
    ModelLink(first.open_link(ps.fed.ps.data_address)).close()
    second = enroll(ps, "worker-1")  # replaces worker-1's certificate
    with pytest.raises(LinkError, match="refused the connection"):
        link = first.open_link(ps.fed.ps.data_address)
        link.recv(pb.PushGrant)  # TLS 1.3: a refused client certificate shows on the first read
    ModelLink(second.open_link(ps.fed.ps.data_address)).close()
    first.close()
    second.close()


def test_tls_1_2_is_refused_in_the_handshake(ps: Ps) -> None:
    channel = enroll(ps, "worker-1")
    ctx = channel.identity.tls13_context(server_side=False, trusted_pem=channel.server_cert_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(LinkError, match="handshake"):
        TlsStream(
            socket.create_connection(split_address(ps.fed.ps.data_address)),
            ctx,
            server_side=False,
            server_hostname=tls_name("ps"),
        )
    channel.close()


def test_client_refuses_a_server_other_than_the_attested_one(ps: Ps) -> None:
    """A host that redirects the data port to its own TLS server (with genuine-looking evidence)
    is refused: the link trusts only the certificate the worker attested."""
    channel = enroll(ps, "worker-1")
    impostor = TlsIdentity.create(ps.ctx.attester, "ps")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        sock, _ = listener.accept()
        try:
            TlsStream(
                sock, impostor.tls13_context(server_side=True, trusted_pem=channel.identity.cert_pem), server_side=True
            )
        except LinkError:
            pass
        sock.close()

    t = threading.Thread(target=serve)
    t.start()
    with pytest.raises(LinkError, match="handshake"):
        channel.open_link(f"127.0.0.1:{listener.getsockname()[1]}")
    t.join(10)
    listener.close()
    channel.close()


def test_nan_is_found_while_data_arrives_and_every_byte_is_still_read() -> None:
    ts = TensorSet.from_arrays(["a", "b"], [np.ones(200_000, np.float32), np.arange(10, dtype=np.int64)])
    ts.arrays[0][150_000] = np.inf
    wire = to_wire(GRADIENTS, 0, ts)
    read_into = WireReader(wire)
    with pytest.raises(RecordError, match="'a' holds NaN or infinite"):
        Assembler(decode_header(wire.header).specs).fill(read_into, check_finite=True)
    assert read_into.left() == 0  # the stream stays in step: the rest was read, not left behind
    ts.arrays[0][150_000] = 1.0
    out = Assembler(decode_header(wire.header).specs).fill(WireReader(to_wire(GRADIENTS, 0, ts)), check_finite=True)
    np.testing.assert_array_equal(out.arrays[1], ts.arrays[1])


def test_a_party_has_one_link_and_handshakes_are_bounded(make_federation: Callable[..., Federation]) -> None:
    """Whoever connects cannot make the PS hold unbounded threads: idle TCP connections beyond
    the handshake cap are closed at once, and a party's second link closes its first."""
    ps = start_ps(make_federation(), max_handshakes=2)
    data = split_address(ps.fed.ps.data_address)
    try:
        idle = [socket.create_connection(data) for _ in range(3)]
        idle[2].settimeout(5)
        assert idle[2].recv(1) == b""  # the third is closed at once: two handshakes are pending
        for s in idle:
            s.close()
        assert eventually(lambda: ps.fleet.links.handshakes_in_progress == 0, timeout=15)
        channel = enroll(ps, "worker-1")
        first = channel.open_link(ps.fed.ps.data_address)
        second = ModelLink(channel.open_link(ps.fed.ps.data_address))
        with pytest.raises(LinkError, match="closed"):
            first.recv(pb.PushGrant)
        ps.rounds.publish(0, to_wire(MODEL, 0, big_set(0)))
        assert second.pull(-1)[0].version == 0
        assert any("too many TLS handshakes" in d.reason for d in ps.ctx.decisions.decisions)
        second.close()
        channel.close()
    finally:
        ps.fleet.stop(linger=0)


def test_a_leaving_worker_is_no_longer_waited_for_and_its_reason_logged(
    ps: Ps, caplog: pytest.LogCaptureFixture
) -> None:
    channel = enroll(ps, "worker-1")
    link = channel.open_link(ps.fed.ps.data_address)
    ps.rounds.join("worker-1")
    link.send(pb.LinkRequest(leave=pb.Leave(reason="worker-1: training failed: boom\nforged line")))
    assert eventually(lambda: "worker-1" not in ps.rounds.active, timeout=10)
    assert any("worker-1: training failed: boom\\nforged line" in r.getMessage() for r in caplog.records)  # escaped
    link.close()
    channel.close()
