"""The compression codecs: exact sizes, round trips within their error bounds, refusals of
malformed encodings, and error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from tdxfl.engine.compression import (
    BLOCK,
    Codec,
    Compressor,
    check_size,
    decode_into,
    encode,
    encoded_size,
    topk_count,
)
from tdxfl.engine.fleet import Update, UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.records import TensorSet
from tdxfl.errors import RecordError


@pytest.mark.parametrize("n", [1, 7, BLOCK, BLOCK + 1, 3 * BLOCK + 5])
@pytest.mark.parametrize("codec", [Codec.NONE, Codec.INT8, Codec.INT4])
def test_quantizers_round_trip_within_half_a_step(codec: Codec, n: int) -> None:
    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    enc = encode(codec, x)
    assert enc.dtype == np.uint8 and enc.size == encoded_size(codec, n)
    out = np.empty(n, np.float32)
    decode_into(codec, enc, out)
    if codec is Codec.NONE:
        np.testing.assert_array_equal(out, x)
        return
    levels = 127 if codec is Codec.INT8 else 7
    pad = np.zeros(-(-n // BLOCK) * BLOCK, np.float32)
    pad[:n] = np.abs(x)
    step = np.repeat(pad.reshape(-1, BLOCK).max(axis=1) / levels, BLOCK)[:n]
    assert (np.abs(out - x) <= step / 2 + 1e-6).all()


def test_topk_keeps_the_largest_values_and_zeroes_the_rest() -> None:
    x = np.array([0.1, -5.0, 0.2, 3.0, -0.3], np.float32)
    enc = encode(Codec.TOPK, x, 2)
    assert enc.size == 16
    out = np.full(5, 9.0, np.float32)
    decode_into(Codec.TOPK, enc, out)
    np.testing.assert_array_equal(out, [0, -5.0, 0, 3.0, 0])
    assert topk_count(1000, 0.01) == 10 and topk_count(5, 0.01) == 1 and topk_count(0, 0.5) == 0


def test_declared_sizes_are_exact() -> None:
    check_size(Codec.INT8, 300, 4 * 2 + 300)
    for codec, n, nbytes in [
        (Codec.INT8, 300, 4 * 2 + 301),
        (Codec.INT4, 300, 4 * 2 + 151),
        (Codec.TOPK, 10, 8 * 11),
        (Codec.TOPK, 10, 12),
        (Codec.NONE, 10, 41),
    ]:
        with pytest.raises(RecordError):
            check_size(codec, n, nbytes)


def _topk_bytes(idx: list[int], values: list[float]) -> np.ndarray:
    return np.concatenate([np.asarray(idx, "<u4").view(np.uint8), np.asarray(values, "<f4").view(np.uint8)])


@pytest.mark.parametrize(
    ("idx", "values", "reason"),
    [
        ([1, 10], [1.0, 2.0], "out of range"),
        ([3, 3], [1.0, 2.0], "strictly increasing"),
        ([4, 2], [1.0, 2.0], "strictly increasing"),
        ([1, 2], [1.0, float("nan")], "NaN"),
    ],
)
def test_malformed_topk_is_refused(idx: list[int], values: list[float], reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        decode_into(Codec.TOPK, _topk_bytes(idx, values), np.empty(10, np.float32))


def test_non_finite_scales_and_overflowing_values_are_refused() -> None:
    enc = encode(Codec.INT8, np.ones(10, np.float32))
    bad = enc.copy()
    bad[:4] = np.asarray([np.inf], "<f4").view(np.uint8)
    with pytest.raises(RecordError, match="scales"):
        decode_into(Codec.INT8, bad, np.empty(10, np.float32))
    big = enc.copy()
    big[:4] = np.asarray([3e38], "<f4").view(np.uint8)
    with pytest.raises(RecordError, match="NaN or infinite"):
        decode_into(Codec.INT8, big, np.empty(10, np.float32))


def _update(a: np.ndarray, kind: UpdateKind = UpdateKind.GRADIENTS) -> Update:
    return Update(UpdateInfo(kind, 0, 1), TensorSet.from_arrays(["w"], [a]))


@pytest.mark.parametrize("codec", [Codec.INT8, Codec.INT4, Codec.TOPK])
def test_error_feedback_sends_the_sum_of_changes_eventually(codec: Codec) -> None:
    """With error feedback, what was sent over many steps adds up to what was meant (the
    residual stays bounded); the residual is exactly what has not been sent yet."""
    rng = np.random.default_rng(0)
    c = Compressor(codec, topk_fraction=0.05)
    meant = np.zeros(1000, np.float32)
    sent = np.zeros(1000, np.float32)
    for _ in range(50):
        g = rng.normal(size=1000).astype(np.float32)
        out = c.compress(_update(g), [None])
        meant += g
        sent += out.tensors.arrays[0]
        assert out.payload[0].size < g.nbytes
    assert c._residuals is not None
    np.testing.assert_allclose(meant - sent, c._residuals[0], atol=1e-3)


def test_weights_are_encoded_as_their_delta_and_other_dtypes_travel_raw() -> None:
    ref = np.full(600, 100.0, np.float32)
    w = ref + np.linspace(-1, 1, 600, dtype=np.float32)
    steps = np.arange(3, dtype=np.int64)
    upd = Update(UpdateInfo(UpdateKind.WEIGHTS, 0, 1), TensorSet.from_arrays(["w", "n"], [w, steps]))
    out = Compressor(Codec.INT8).compress(upd, [ref, steps])
    assert out.codecs == [Codec.INT8, Codec.NONE] and out.relative == [True, False]
    np.testing.assert_allclose(out.tensors.arrays[0], w, atol=1 / 127)
    np.testing.assert_array_equal(out.payload[1].view("<i8"), steps)
