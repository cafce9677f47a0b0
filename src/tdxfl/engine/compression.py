"""Compressed updates (numpy only): blockwise 8-bit and 4-bit quantization, top-k
sparsification, and the worker's error feedback.

Wire formats (little-endian, one encoded byte string per float32 tensor of ``n`` values):

- ``int8``: ``ceil(n / 256)`` float32 scales, then ``n`` int8 values ``q``; value ``i`` decodes
  to ``q[i] * scale[i // 256]`` (symmetric, ``scale = max|x| / 127`` of its block).
- ``int4``: ``ceil(n / 256)`` float32 scales, then ``ceil(n / 2)`` bytes, two values a byte (the
  even-indexed value in the low nibble) stored as ``q + 8``; ``q`` in -8..7 (the encoder uses
  -7..7, ``scale = max|x| / 7``).
- ``topk``: ``k`` uint32 indices, strictly increasing, then their ``k`` float32 values; every
  other value decodes to 0.

Sizes are exact (``encoded_size``), so a receiver checks a declared size against the shape
before reading a byte (``check_size``), and ``decode_into`` refuses indices out of range or not
strictly increasing, and non-finite scales or values (RecordError with the reason).

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the worker keeps, per tensor, the
residual ``r = v - decode(encode(v))`` of what it sent, ``v = change + r_previous``, and adds it
to its next change; a change is the update relative to the global model it received (a
gradient is a change already; weights are sent as their delta).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tdxfl.engine.fleet import Update
from tdxfl.engine.records import TensorSet
from tdxfl.errors import RecordError

BLOCK = 256  #: values per quantization block (one float32 scale each)

__all__ = [
    "BLOCK",
    "Codec",
    "CompressedUpdate",
    "Compressor",
    "check_size",
    "decode_into",
    "encode",
    "encoded_size",
    "topk_count",
]


class Codec(enum.Enum):
    """How one tensor travels: raw, or one of the compressed formats."""

    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"
    TOPK = "topk"


def _blocks(n: int) -> int:
    return -(-n // BLOCK)


def topk_count(n: int, fraction: float) -> int:
    """Values top-k keeps of a tensor of ``n``: ``ceil(fraction * n)``, at least 1 (0 when empty)."""
    return 0 if n == 0 else min(n, max(1, math.ceil(fraction * n)))


def encoded_size(codec: Codec, n: int, k: int = 0) -> int:
    """Exact encoded bytes of ``n`` float32 values (``k`` kept values for top-k)."""
    if codec is Codec.NONE:
        return 4 * n
    if codec is Codec.INT8:
        return 4 * _blocks(n) + n
    if codec is Codec.INT4:
        return 4 * _blocks(n) + (n + 1) // 2
    return 8 * k


def check_size(codec: Codec, n: int, nbytes: int, name: str = "tensor") -> None:
    """RecordError unless ``nbytes`` is what ``codec`` takes for ``n`` values (top-k: ``8 k``
    bytes with ``k <= n``): checked before any byte is read."""
    if codec is Codec.TOPK:
        if nbytes % 8 or nbytes // 8 > n:
            raise RecordError(f"tensor {name!r}: {nbytes} top-k bytes do not hold k <= {n} (index, value) pairs")
        return
    want = encoded_size(codec, n)
    if nbytes != want:
        raise RecordError(f"tensor {name!r}: {codec.value} encoding of {n} values takes {want} bytes, not {nbytes}")


def _quantize(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales (float32, one per block) and int8 codes in -levels..levels."""
    n = x.size
    nb = _blocks(n)
    padded = np.zeros(nb * BLOCK, np.float32)
    padded[:n] = x
    blocks = padded.reshape(nb, BLOCK)
    scales = (np.abs(blocks).max(axis=1) / levels).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    q = np.rint(blocks / safe[:, None])
    np.clip(q, -levels, levels, out=q)
    return scales, q.astype(np.int8).reshape(-1)[:n]


def encode(codec: Codec, x: np.ndarray, k: int = 0) -> np.ndarray:
    """The encoded bytes (uint8) of float32 values ``x`` (flattened); ``k`` for top-k."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    n = flat.size
    if codec is Codec.NONE:
        return flat.astype("<f4").view(np.uint8)
    if codec is Codec.INT8:
        scales, q = _quantize(flat, 127)
        return np.concatenate([scales.astype("<f4").view(np.uint8), q.view(np.uint8)])
    if codec is Codec.INT4:
        scales, q = _quantize(flat, 7)
        nib = (q.astype(np.int16) + 8).astype(np.uint8)
        if n % 2:
            nib = np.append(nib, np.uint8(8))
        packed = nib[0::2] | (nib[1::2] << 4)
        return np.concatenate([scales.astype("<f4").view(np.uint8), packed.astype(np.uint8)])
    if not 0 <= k <= n:
        raise ValueError(f"top-k of {k} values from {n}")
    idx = np.sort(np.argpartition(np.abs(flat), n - k)[n - k :]).astype("<u4") if k else np.empty(0, "<u4")
    return np.concatenate([idx.view(np.uint8), flat[idx].astype("<f4").view(np.uint8)])


def decode_into(codec: Codec, data: np.ndarray, out: np.ndarray, name: str = "tensor") -> None:
    """Decode ``data`` (uint8, its size already checked by ``check_size``) into float32 ``out``
    in place; RecordError on out-of-range or repeated top-k indices, non-finite scales or values."""
    flat = out.reshape(-1)
    n = flat.size
    check_size(codec, n, data.size, name)
    if codec is Codec.NONE:
        flat[...] = data.view("<f4")
    elif codec is Codec.TOPK:
        k = data.size // 8
        idx = data[: 4 * k].view("<u4")
        values = data[4 * k :].view("<f4")
        if k and (int(idx[-1]) >= n or (k > 1 and not bool((idx[1:] > idx[:-1]).all()))):
            raise RecordError(f"tensor {name!r}: top-k indices out of range or not strictly increasing")
        if not np.isfinite(values).all():
            raise RecordError(f"tensor {name!r} holds NaN or infinite values")
        flat[...] = 0
        flat[idx] = values
        return
    else:
        nb = _blocks(n)
        scales = data[: 4 * nb].view("<f4")
        if not np.isfinite(scales).all():
            raise RecordError(f"tensor {name!r} has NaN or infinite scales")
        body = data[4 * nb :]
        if codec is Codec.INT8:
            q = body.view(np.int8)
        else:
            q = np.empty(2 * body.size, np.int8)
            q[0::2] = (body & 0x0F).view(np.int8)
            q[1::2] = (body >> 4).view(np.int8)
            q -= 8
            q = q[:n]
        full = n // BLOCK
        with np.errstate(over="ignore", invalid="ignore"):  # overflow shows as infinity, refused below
            if full:
                head = flat[: full * BLOCK].reshape(full, BLOCK)
                np.multiply(q[: full * BLOCK].reshape(full, BLOCK), scales[:full, None], out=head)
            if n > full * BLOCK:
                np.multiply(q[full * BLOCK :], scales[full], out=flat[full * BLOCK :])
    if not np.isfinite(flat).all():
        raise RecordError(f"tensor {name!r} holds NaN or infinite values")


@dataclass(frozen=True)
class CompressedUpdate(Update):
    """An update as the PS will see it (``tensors``: decoded change + reference, so the
    in-memory fleet aggregates exactly what the wire would deliver) and its encoded form:
    per tensor its codec and bytes (``Codec.NONE`` for tensors sent raw)."""

    codecs: list[Codec] = field(default_factory=list)
    payload: list[np.ndarray] = field(default_factory=list)
    #: whether each tensor was encoded relative to the global model (the PS adds it back)
    relative: list[bool] = field(default_factory=list)

    @property
    def wire_bytes(self) -> int:
        return sum(p.size for p in self.payload)


class Compressor:
    """A worker's codec and, with ``error_feedback``, its residuals (one per tensor)."""

    def __init__(self, codec: Codec, *, topk_fraction: float = 0.01, error_feedback: bool = True) -> None:
        if codec is Codec.NONE:
            raise ValueError("Compressor needs a compressing codec")
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
        self.codec = codec
        self.topk_fraction = topk_fraction
        self.error_feedback = error_feedback
        self._residuals: list[np.ndarray] | None = None

    def compress(self, update: Update, reference: Sequence[np.ndarray | None]) -> CompressedUpdate:
        """Encode every float32 tensor's change (relative to ``reference`` where it is not None),
        with the residual added; other tensors travel raw."""
        arrays = update.tensors.arrays
        if self._residuals is None or [r.shape for r in self._residuals] != [np.shape(a) for a in arrays]:
            self._residuals = [np.zeros(np.shape(a), np.float32) for a in arrays]
        codecs, payload, relative, seen = [], [], [], []
        for a, ref, r in zip(arrays, reference, self._residuals):
            a = np.asarray(a)
            if a.dtype != np.float32:
                codecs.append(Codec.NONE)
                payload.append(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
                relative.append(False)
                seen.append(a)
                continue
            v = a - np.asarray(ref, np.float32) if ref is not None else a.astype(np.float32, copy=True)
            if self.error_feedback:
                v += r
            enc = encode(self.codec, v, topk_count(v.size, self.topk_fraction))
            dec = np.empty(v.shape, np.float32)
            decode_into(self.codec, enc, dec)
            if self.error_feedback:
                np.subtract(v, dec, out=r)
            codecs.append(self.codec)
            payload.append(enc)
            relative.append(ref is not None)
            seen.append(dec + np.asarray(ref, np.float32) if ref is not None else dec)
        return CompressedUpdate(
            update.info, TensorSet(update.tensors.specs, seen), codecs=codecs, payload=payload, relative=relative
        )
