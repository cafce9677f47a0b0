"""Compressed updates over a real tensor link: accepted ones decode into the PS's buffers (FedAvg
weights: the delta plus the published model), and every malformed one is refused with a reason,
before any byte moves where its header already tells, while the link stays usable."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tdxfl.client.model_link import ModelLink
from tdxfl.config import Federation
from tdxfl.engine.compression import Codec, CompressedUpdate, Compressor
from tdxfl.engine.fleet import Update, UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import FedAvg, LocalTraining
from tdxfl.transport.attested import AttestedChannel, connect
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.tensors import to_wire, to_wire_compressed
from tdxfl.wiring.party import party_context
from tdxfl.wiring.ps import attested_fleet

MODEL, WEIGHTS = pb.TENSOR_KIND_MODEL, pb.TENSOR_KIND_WEIGHTS


def model_set(seed: int) -> TensorSet:
    rng = np.random.default_rng(seed)
    shapes = [(64, 300), (300,), (7,)]
    return TensorSet.from_arrays(["w", "b", "c"], [rng.standard_normal(s, dtype=np.float32) for s in shapes])


class Ps:
    def __init__(self, fed: Federation) -> None:
        ctx = party_context(fed, "ps")
        self.fleet = attested_fleet(fed, ctx, model_set(0).specs, FedAvg(LocalTraining(1, 0.1)))
        a = self.fleet.addresses
        self.fleet.start()
        self.fed = fed.with_ps_addresses(a.address, a.enroll_address, a.data_address)
        self.rounds = self.fleet.state


@pytest.fixture
def ps(make_federation: Callable[..., Federation]) -> Iterator[Ps]:
    running = Ps(make_federation())
    yield running
    running.fleet.stop(linger=0)


def open_link(ps: Ps, name: str = "worker-1") -> tuple[AttestedChannel, ModelLink]:
    ctx = party_context(ps.fed, name)
    channel = connect(
        name,
        "worker",
        ctx.attester,
        ctx.peer_verifier(ps.fed.policy_for("ps")),
        "ps",
        ps.fed.ps.address,
        ps.fed.ps.enroll_address,
    )
    return channel, ModelLink(channel.open_link(ps.fed.ps.data_address))


def compressed(codec: Codec, global_w: TensorSet, seed: int = 1) -> CompressedUpdate:
    trained = TensorSet(global_w.specs, [a + 0.01 * b for a, b in zip(global_w.arrays, model_set(seed).arrays)])
    update = Update(UpdateInfo(UpdateKind.WEIGHTS, 0, 3), trained)
    return Compressor(codec, topk_fraction=0.1).compress(update, list(global_w.arrays))


def push_raw(link: ModelLink, header: pb.TensorHeader, payload: list[np.ndarray]) -> pb.PushReply:
    """Offer ``header`` and, when granted, send ``payload`` as it is (whatever the header said)."""
    link.link.send(pb.LinkRequest(push=header))
    grant = link.link.recv(pb.PushGrant)
    if not grant.granted:
        return pb.PushReply(accepted=False, reason=grant.reason)
    link.link.send_raw([p.data for p in payload])
    return link.link.recv(pb.PushReply)


@pytest.mark.parametrize("codec", [Codec.INT8, Codec.INT4, Codec.TOPK])
def test_compressed_weights_decode_to_what_the_worker_meant(ps: Ps, codec: Codec) -> None:
    channel, link = open_link(ps)
    global_w = model_set(0)
    ps.rounds.publish(0, to_wire(MODEL, 0, global_w))
    _, pulled = link.pull(-1)
    ps.rounds.join("worker-1")
    upd = compressed(codec, TensorSet(pulled.specs, [a.copy() for a in pulled.arrays]))
    reply = link.push(WEIGHTS, 0, upd, num_samples=3, metrics={"loss": 0.1})
    assert reply.accepted, reply.reason
    step = ps.rounds.collect(1, 10, fail_on_timeout=True, grace=0)
    for want, got in zip(upd.tensors.arrays, step.mean):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert ps.rounds.bytes_in == upd.wire_bytes < global_w.nbytes / 3
    link.close()
    channel.close()


def test_malformed_compressed_updates_are_refused_and_the_link_survives(ps: Ps) -> None:
    channel, link = open_link(ps)
    global_w = model_set(0)
    ps.rounds.publish(0, to_wire(MODEL, 0, global_w))
    link.pull(-1)
    ps.rounds.join("worker-1")

    def wire(codec: Codec) -> tuple[pb.TensorHeader, list[np.ndarray]]:
        w = to_wire_compressed(WEIGHTS, 0, compressed(codec, global_w), num_samples=3, metrics={})
        header = pb.TensorHeader()
        header.CopyFrom(w.header)
        return header, [p.copy() for p in w.arrays]

    # a bomb: the header declares more bytes than int8 takes for the shape (refused before data)
    h, p = wire(Codec.INT8)
    h.tensors[0].encoded_bytes += 1000
    h.total_bytes += 1000
    assert "takes" in push_raw(link, h, p).reason
    # top-k with k larger than the tensor
    h, p = wire(Codec.TOPK)
    n = 64 * 300
    h.total_bytes += 8 * (n + 1) - h.tensors[0].encoded_bytes
    h.tensors[0].encoded_bytes = 8 * (n + 1)
    assert "k <=" in push_raw(link, h, p).reason
    # a compressed tensor that does not decode to float32, and one whose sizes do not add up
    h, p = wire(Codec.INT8)
    h.tensors[1].dtype = "float64"
    assert "float32" in push_raw(link, h, p).reason
    h, p = wire(Codec.INT4)
    h.total_bytes -= 1
    assert "header says" in push_raw(link, h, p).reason
    assert ps.rounds.bytes_in == 0  # no refused offer moved data
    # refused once their data arrived: out-of-range and repeated top-k indices, a NaN scale
    h, p = wire(Codec.TOPK)
    p[0][:4] = np.asarray([n], "<u4").view(np.uint8)  # first index out of range... and not increasing
    assert "top-k indices" in push_raw(link, h, p).reason
    h, p = wire(Codec.TOPK)
    idx = p[0][: 4 * (len(p[0]) // 8)].view("<u4")
    idx[1] = idx[0]
    assert "strictly increasing" in push_raw(link, h, p).reason
    h, p = wire(Codec.INT8)
    p[0][:4] = np.asarray([np.nan], "<f4").view(np.uint8)
    assert "scales" in push_raw(link, h, p).reason
    h, p = wire(Codec.TOPK)
    values = p[0][4 * (len(p[0]) // 8) :].view("<f4")
    values[3] = np.inf
    assert "NaN or infinite" in push_raw(link, h, p).reason
    # the same link still carries a good compressed update
    h, p = wire(Codec.INT8)
    reply = push_raw(link, h, p)
    assert reply.accepted, reply.reason
    step = ps.rounds.collect(1, 10, fail_on_timeout=True, grace=0)
    assert step.contributors == ["worker-1"]
    link.close()
    channel.close()
