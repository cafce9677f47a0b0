"""Tensor sets on the wire: a ``TensorHeader`` (kind, version, specs) and the tensors' raw
little-endian bytes, no pickle.

The sender's arrays are sent as they are (``to_wire`` converts only what is not already
contiguous little-endian); the receiver validates the header, then reads the bytes straight
into preallocated arrays (``Assembler``), so a 100 MB update is never one message and is
copied by nobody but the TLS layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tdxfl.core.records import ALLOWED_DTYPES, RecordError, TensorSet, TensorSpec, is_floating
from tdxfl.transport.proto import tdxfl_pb2 as pb

#: refuse headers announcing more than this many bytes (a malicious peer must not OOM us)
MAX_STREAM_BYTES = 8 << 30
_CHECK_BLOCK = 1 << 16  # elements: 256 KiB of float32, well inside L2


class StreamError(ValueError):
    """A tensor header or its data is malformed: bad dtype or shape, wrong sizes."""


@dataclass
class Header:
    """Decoded ``TensorHeader``."""

    kind: str
    version: int
    specs: list[TensorSpec] = field(default_factory=list)
    num_samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def _le(array: np.ndarray, wire_dtype: str | None) -> np.ndarray:
    a = np.asarray(array)
    if wire_dtype is not None and is_floating(a.dtype) and a.dtype.name != wire_dtype:
        a = a.astype(wire_dtype)
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def _byte_view(a: np.ndarray) -> memoryview:
    return a.reshape(-1).view(np.uint8).data


@dataclass(frozen=True)
class WireTensors:
    """A tensor set ready to send: its header and contiguous little-endian arrays."""

    header: pb.TensorHeader
    arrays: list[np.ndarray]

    def views(self) -> list[memoryview]:
        """The arrays' raw bytes, in header order (zero-copy)."""
        return [_byte_view(a) for a in self.arrays]

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data."""
        return int(self.header.total_bytes)


def to_wire(
    kind: str,
    version: int,
    tensors: TensorSet | None = None,
    *,
    num_samples: int = 0,
    metrics: Mapping[str, float] | None = None,
    wire_dtype: str | None = None,
) -> WireTensors:
    """Header and arrays for sending ``tensors``: the arrays themselves where they already are
    contiguous little-endian (no copy: the caller keeps them unchanged while they are sent).

    ``wire_dtype`` (``"float16"`` or ``"bfloat16"``) converts floating-point tensors for transfer.
    """
    arrays = [] if tensors is None else [_le(a, wire_dtype) for a in tensors.arrays]
    specs = [] if tensors is None else [TensorSpec(s.name, a.dtype.name, s.shape) for s, a in zip(tensors.specs, arrays)]
    header = pb.TensorHeader(
        kind=kind,
        version=version,
        tensors=[pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in specs],
        num_samples=num_samples,
        metrics=dict(metrics or {}),
        total_bytes=sum(s.nbytes for s in specs),
    )
    return WireTensors(header, arrays)


def decode_header(h: pb.TensorHeader) -> Header:
    """Validate and decode a header: allowed dtypes, sane shapes, sizes that add up."""
    specs = []
    for t in h.tensors:
        if t.dtype not in ALLOWED_DTYPES:
            raise StreamError(f"tensor {t.name!r} has dtype {t.dtype!r}, not one of {sorted(ALLOWED_DTYPES)}")
        if any(d < 0 for d in t.shape):
            raise StreamError(f"tensor {t.name!r} has a negative dimension {list(t.shape)}")
        specs.append(TensorSpec(t.name, t.dtype, tuple(int(d) for d in t.shape)))
    total = sum(s.nbytes for s in specs)
    if total != h.total_bytes:
        raise StreamError(f"header says {h.total_bytes} bytes but its tensors need {total}")
    if total > MAX_STREAM_BYTES:
        raise StreamError(f"stream of {total} bytes exceeds the limit of {MAX_STREAM_BYTES}")
    return Header(h.kind, h.version, specs, h.num_samples, dict(h.metrics))


class Assembler:
    """Preallocated arrays for a header's specs, filled in place with raw little-endian bytes."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self.arrays = [np.empty(s.shape, dtype=np.dtype(s.dtype).newbyteorder("<")) for s in self.specs]
        self.views = [_byte_view(a) for a in self.arrays]

    @property
    def nbytes(self) -> int:
        """Bytes the tensors take."""
        return sum(len(v) for v in self.views)

    def fill(self, read_into: Callable[[Sequence[memoryview]], None], *, check_finite: bool = False) -> TensorSet:
        """Let ``read_into`` fill every view in order; the tensors in native byte order.

        With ``check_finite``, floating-point data is checked for NaN and infinity block by
        block as it arrives, while it is still in the CPU cache: RecordError naming the first
        such tensor, raised once all bytes are read (the stream stays in step). The arrays are
        this assembler's own: a second ``fill`` overwrites them.
        """
        bad = None
        for spec, array, view in zip(self.specs, self.arrays, self.views):
            if not check_finite or bad is not None or not is_floating(array.dtype):
                read_into([view])
                continue
            flat = array.reshape(-1)
            for i in range(0, flat.size, _CHECK_BLOCK):
                block = flat[i : i + _CHECK_BLOCK]
                read_into([_byte_view(block)])
                if bad is None and not np.isfinite(block).all():
                    bad = spec.name
        if bad is not None:
            raise RecordError(f"tensor {bad!r} holds NaN or infinite values")
        arrays = [a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")) for a in self.arrays]
        return TensorSet(list(self.specs), arrays)


def as_dtype(tensors: TensorSet, specs: Sequence[TensorSpec]) -> TensorSet:
    """Convert a received set to the expected specs' dtypes (e.g. float16 wire back to float32).

    Raises RecordError when names or shapes differ.
    """
    tensors.check_compatible(specs, check_dtype=False)
    arrays = [a if a.dtype.name == s.dtype else a.astype(s.dtype) for a, s in zip(tensors.arrays, specs)]
    return TensorSet(list(specs), arrays)


__all__ = [
    "Assembler",
    "Header",
    "MAX_STREAM_BYTES",
    "RecordError",
    "StreamError",
    "WireTensors",
    "as_dtype",
    "decode_header",
    "to_wire",
]
