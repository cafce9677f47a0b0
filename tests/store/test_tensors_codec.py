"""Tests for the pickle-free tensor set encoding."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.errors import RecordError
from tdxfl.store.tensors_codec import CODEC_MAGIC, decode_tensor_set, encode_tensor_set


def sample() -> TensorSet:
    rng = np.random.default_rng(0)
    return TensorSet.from_arrays(
        ["dense/kernel", "dense/bias", "scalar", "empty", "ids", "bytes", "half", "wide", "kernel"],
        [
            rng.standard_normal((7, 5)).astype(np.float32),
            rng.standard_normal(5),
            np.array(3.5, dtype=np.float32),
            np.zeros((0, 4), dtype=np.float32),
            np.arange(-5, 5, dtype=np.int64),
            np.arange(256, dtype=np.uint8).reshape(16, 16),
            rng.standard_normal(11).astype(np.float16),
            np.arange(6, dtype=np.int32).reshape(1, 2, 3),
            np.ones(3, dtype=np.float32),  # names need not be unique
        ],
    )


def encode(ts: TensorSet, meta: dict[str, object] | None = None) -> bytes:
    return b"".join(bytes(p) for p in encode_tensor_set(ts, meta))


def assert_same(a: TensorSet, b: TensorSet) -> None:
    assert a.specs == b.specs
    for x, y in zip(a.arrays, b.arrays):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def test_round_trip_readinto_source() -> None:
    ts = sample()
    meta = {"round": 3, "loss": 0.25, "notes": ["a", "b"], "nested": {"x": None}}
    ts2, meta2 = decode_tensor_set(io.BytesIO(encode(ts, meta)))
    assert_same(ts, ts2)
    assert meta2 == meta
    for a in ts2.arrays:
        assert a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative


def test_round_trip_read_callable_with_short_reads() -> None:
    ts = sample()
    stream = io.BytesIO(encode(ts))

    def read(n: int) -> bytes:
        return stream.read(min(n, 7))

    ts2, meta2 = decode_tensor_set(read)
    assert_same(ts, ts2)
    assert meta2 == {}


def test_empty_tensor_set() -> None:
    ts2, meta = decode_tensor_set(io.BytesIO(encode(TensorSet([], []), {"k": 1})))
    assert ts2.specs == [] and ts2.arrays == [] and meta == {"k": 1}


def test_contiguous_little_endian_arrays_are_yielded_without_copy() -> None:
    a = np.arange(1000, dtype=np.float32)
    pieces = list(encode_tensor_set(TensorSet.from_arrays(["a"], [a])))
    assert len(pieces) == 2
    assert np.shares_memory(np.frombuffer(pieces[1], dtype=np.uint8), a)


def test_big_endian_and_non_contiguous_arrays_are_normalized() -> None:
    be = np.arange(12, dtype=">f4").reshape(3, 4)
    nc = np.arange(20, dtype=np.int64).reshape(4, 5).T
    ts = TensorSet.from_arrays(["be", "nc"], [be, nc])
    raw = encode(ts)
    assert np.arange(12, dtype="<f4").tobytes() in raw
    ts2, _ = decode_tensor_set(io.BytesIO(raw))
    np.testing.assert_array_equal(ts2.arrays[0], be)
    np.testing.assert_array_equal(ts2.arrays[1], nc)


@pytest.mark.parametrize("array", [np.array([True]), np.array([1j]), np.array(["s"]), np.array([1], dtype=np.int16)])
def test_encode_rejects_disallowed_dtypes(array: np.ndarray) -> None:
    with pytest.raises(RecordError, match="dtype"):
        encode(TensorSet.from_arrays(["x"], [array]))


def test_encode_rejects_spec_mismatch_and_bad_metadata() -> None:
    ts = TensorSet([TensorSpec("x", "float32", (3,))], [np.zeros(4, dtype=np.float32)])
    with pytest.raises(RecordError, match="spec says"):
        encode(ts)
    with pytest.raises(RecordError, match="specs for"):
        encode(TensorSet([TensorSpec("x", "float32", (3,))], []))
    with pytest.raises(RecordError, match="JSON"):
        encode(TensorSet([], []), {"obj": object()})


def test_truncation_everywhere() -> None:
    raw = encode(sample(), {"m": 1})
    (hlen,) = struct.unpack("<Q", raw[8:16])
    for cut in sorted({0, 4, 15, 16, 16 + hlen // 2, 16 + hlen, 16 + hlen + 1, len(raw) - 1}):
        with pytest.raises(RecordError, match="truncated"):
            decode_tensor_set(io.BytesIO(raw[:cut]))


def test_trailing_data() -> None:
    raw = encode(sample())
    with pytest.raises(RecordError, match="trailing data"):
        decode_tensor_set(io.BytesIO(raw + b"\x00"))
    decode_tensor_set(io.BytesIO(raw + b"\x00"), require_end=False)


def craft(header: object, data: bytes = b"", magic: bytes = CODEC_MAGIC) -> io.BytesIO:
    h = json.dumps(header).encode()
    return io.BytesIO(magic + struct.pack("<Q", len(h)) + h + data)


def entry(name: object = "t", dtype: object = "float32", shape: object = (2,)) -> dict[str, object]:
    return {"name": name, "dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ([], "not a JSON object"),
        ({"version": 2, "tensors": []}, "unsupported tensor encoding version"),
        ({"version": 1}, "'tensors' is not a list"),
        ({"version": 1, "tensors": [], "metadata": []}, "'metadata' is not an object"),
        ({"version": 1, "tensors": [entry(dtype="object")]}, "dtype 'object'"),
        ({"version": 1, "tensors": [entry(dtype="bool")]}, "dtype 'bool'"),
        ({"version": 1, "tensors": [entry(dtype=3)]}, "dtype 3"),
        ({"version": 1, "tensors": [entry(shape=[-1])]}, "shape"),
        ({"version": 1, "tensors": [entry(shape=[2.0])]}, "shape"),
        ({"version": 1, "tensors": [entry(shape=[True])]}, "shape"),
        ({"version": 1, "tensors": [entry(shape="2")]}, "shape"),
        ({"version": 1, "tensors": [entry(shape=[1] * 33)]}, "shape"),
        ({"version": 1, "tensors": [entry(name=5)]}, "name is not a string"),
        ({"version": 1, "tensors": [{"name": "t", "dtype": "float32"}]}, "exactly name, dtype and shape"),
        ({"version": 1, "tensors": [{**entry(), "extra": 1}]}, "exactly name, dtype and shape"),
        ({"version": 1, "tensors": [entry(shape=[1 << 30, 1 << 30])]}, "limit"),
    ],
)
def test_header_validation(header: object, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        decode_tensor_set(craft(header, b"\x00" * 8))


def test_total_size_limit_and_other_framing_errors() -> None:
    header = {"version": 1, "tensors": [entry(shape=[100])]}
    with pytest.raises(RecordError, match="limit"):
        decode_tensor_set(craft(header, b"\x00" * 400), max_total_bytes=399)
    decode_tensor_set(craft(header, b"\x00" * 400), max_total_bytes=400)
    with pytest.raises(RecordError, match="bad magic"):
        decode_tensor_set(craft(header, magic=b"PICKLE!!"))
    with pytest.raises(RecordError, match="not valid JSON"):
        decode_tensor_set(io.BytesIO(CODEC_MAGIC + struct.pack("<Q", 3) + b"{x}"))
    with pytest.raises(RecordError, match="header length"):
        decode_tensor_set(io.BytesIO(CODEC_MAGIC + struct.pack("<Q", 1 << 40)))


def test_numpy_scalars_in_metadata_become_python_values() -> None:
    meta = {"accuracy": np.float32(0.5), "round": np.int64(3), "ok": np.bool_(True)}
    _, meta2 = decode_tensor_set(io.BytesIO(encode(TensorSet([], []), meta)))  # type: ignore[arg-type]
    assert meta2 == {"accuracy": 0.5, "round": 3, "ok": True}
    assert type(meta2["round"]) is int
