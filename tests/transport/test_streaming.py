"""Chunked tensor streaming, over a real mutually attested gRPC connection."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tdxfl.config import Federation
from tdxfl.core.records import TensorSet
from tdxfl.party import party_context
from tdxfl.server.rounds import RoundState
from tdxfl.server.service import ParameterServerService, add_to_server
from tdxfl.transport.attested import AttestedServer, connect, role_table
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.tensors import (
    DEFAULT_CHUNK_BYTES,
    StreamError,
    decode_stream,
    encode_stream,
    iter_serialized,
    parse_frame,
    serialize_stream,
)


def big_set(seed: int) -> TensorSet:
    """~105 MB of float32 in shapes like ResNet-50's largest layers, plus odd small ones."""
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 512, 512), (1, 1, 1024, 2048), (2048, 10), (7,), (3, 3, 256, 256), (22_000_000,)]
    arrays = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    return TensorSet.from_arrays([f"t{i}" for i in range(len(arrays))], arrays)


def test_encode_decode_roundtrip_spans_chunk_boundaries() -> None:
    ts = TensorSet.from_arrays(["a", "b", "c"], [np.arange(5, dtype=np.float32), np.ones((3, 7), np.float64), np.arange(11, dtype=np.int32)])
    frames = list(encode_stream("weights", 4, ts, chunk_bytes=16))
    assert all(len(f.chunk) <= 16 for f in frames[1:])
    header, out = decode_stream(frames)
    assert header.version == 4 and header.kind == "weights"
    for x, y in zip(ts.arrays, out.arrays):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype


def test_truncated_and_oversized_streams_are_refused() -> None:
    ts = TensorSet.from_arrays(["a"], [np.arange(100, dtype=np.float32)])
    frames = list(encode_stream("weights", 0, ts, chunk_bytes=64))
    with pytest.raises(StreamError, match="ended after"):
        decode_stream(frames[:-1])
    with pytest.raises(StreamError, match="more bytes"):
        decode_stream(frames + [pb.TensorFrame(chunk=b"xx")])
    bad = pb.TensorFrame()
    bad.CopyFrom(frames[0])
    bad.header.total_bytes = 1
    with pytest.raises(StreamError, match="header says"):
        decode_stream([bad])
    pickle_dtype = pb.TensorFrame(header=pb.TensorHeader(kind="weights", tensors=[pb.TensorSpec(name="x", dtype="object", shape=[1])]))
    with pytest.raises(StreamError, match="dtype"):
        decode_stream([pickle_dtype])


def test_fp16_wire_dtype_halves_bytes() -> None:
    ts = TensorSet.from_arrays(["a"], [np.linspace(-1, 1, 1000, dtype=np.float32)])
    frames = list(encode_stream("gradients", 0, ts, wire_dtype="float16"))
    assert sum(len(f.chunk) for f in frames[1:]) == 2000
    _, out = decode_stream(frames)
    np.testing.assert_allclose(out.arrays[0], ts.arrays[0], atol=1e-3)


def test_100mb_update_roundtrips_over_attested_grpc(make_federation: Callable[..., Federation]) -> None:
    fed = make_federation()
    ps_ctx = party_context(fed, "ps")
    w_ctx = party_context(fed, "worker-1")
    model = big_set(0)
    assert model.nbytes >= 100 * 2**20
    rounds = RoundState(model.specs, "weights")
    server = AttestedServer(
        "ps", ps_ctx.attester, ps_ctx.peer_verifier(fed, "workers"), fed.ps.address, fed.ps.enroll_address,
        roles=role_table([("worker-1", "worker")]),
    )
    add_to_server(ParameterServerService(fed, server, rounds), server.main)
    server.start()
    try:
        channel = connect("worker-1", "worker", w_ctx.attester, w_ctx.peer_verifier(fed, "ps"), "ps", fed.ps.address, fed.ps.enroll_address)
        stub = pb_grpc.ParameterServerStub(channel.channel)
        stub.Join(pb.JoinRequest(party="worker-1", config_digest=fed.training_digest()))
        frames = serialize_stream("weights", 0, model)
        assert len(frames) > model.nbytes // DEFAULT_CHUNK_BYTES
        rounds.publish(0, frames)
        _, pulled = decode_stream(stub.Pull(pb.PullRequest(after_version=-1)))
        for x, y in zip(model.arrays, pulled.arrays):
            np.testing.assert_array_equal(x, y)
        update = big_set(1)
        collected: dict[str, object] = {}
        t = threading.Thread(target=lambda: collected.update(r=rounds.collect(1, 60, fail_on_timeout=True, grace=0)))
        t.start()
        sent: Iterator[pb.TensorFrame] = encode_stream("weights", 0, update, num_samples=5)
        reply = stub.Push(sent)
        assert reply.accepted, reply.reason
        t.join(60)
        result = collected["r"]
        for x, y in zip(update.arrays, result.mean):  # type: ignore[attr-defined]
            np.testing.assert_allclose(x, y, rtol=1e-6)
        assert rounds.bytes_in == update.nbytes and rounds.bytes_out >= model.nbytes
        channel.close()
    finally:
        server.stop(None)


def test_parse_frame_takes_chunks_without_copy_and_refuses_garbage() -> None:
    ts = TensorSet.from_arrays(["a", "b"], [np.arange(70_000, dtype=np.float32), np.ones(5, np.int64)])
    raw = list(iter_serialized("gradients", 2, ts, num_samples=3, chunk_bytes=100_000))
    assert raw == [f.SerializeToString() for f in encode_stream("gradients", 2, ts, num_samples=3, chunk_bytes=100_000)]
    header = parse_frame(raw[0])
    assert not isinstance(header, memoryview) and header.kind == "gradients" and header.num_samples == 3
    chunk = parse_frame(raw[1])
    assert isinstance(chunk, memoryview) and chunk.obj is raw[1] and len(chunk) == 100_000
    for bad in (raw[1][:-1], b"\x12\xff", b"\x1a\x00", b""):
        with pytest.raises(StreamError):
            parse_frame(bad)
