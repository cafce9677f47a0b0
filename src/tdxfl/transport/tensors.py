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

from tdxfl.engine.compression import Codec, CompressedUpdate, check_size, decode_into
from tdxfl.engine.fleet import UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.records import ALLOWED_DTYPES, TensorSet, TensorSpec, is_floating
from tdxfl.errors import RecordError
from tdxfl.transport.proto import tdxfl_pb2 as pb

#: refuse headers announcing more than this many bytes (a malicious peer must not OOM us)
MAX_STREAM_BYTES = 8 << 30
_CHECK_BLOCK = 1 << 16  # elements: 256 KiB of float32, well inside L2


#: the wire kind of each update kind, and back
_UPDATE_KINDS = {UpdateKind.GRADIENTS: pb.TENSOR_KIND_GRADIENTS, UpdateKind.WEIGHTS: pb.TENSOR_KIND_WEIGHTS}
_FROM_WIRE = {v: k for k, v in _UPDATE_KINDS.items()}
#: the wire codec of each codec, and back
_CODECS = {Codec.NONE: pb.CODEC_NONE, Codec.INT8: pb.CODEC_INT8, Codec.INT4: pb.CODEC_INT4, Codec.TOPK: pb.CODEC_TOPK}
_CODEC_FROM_WIRE = {v: k for k, v in _CODECS.items()}


def wire_kind(kind: UpdateKind) -> pb.TensorKind:
    """The ``TensorKind`` that carries updates of ``kind``."""
    return _UPDATE_KINDS[kind]


@dataclass
class Header:
    """Decoded ``TensorHeader``."""

    kind: pb.TensorKind
    version: int
    specs: list[TensorSpec] = field(default_factory=list)
    num_samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    #: per tensor: its codec, its bytes on the wire, whether it is relative to the global model
    codecs: list[Codec] = field(default_factory=list)
    wire_sizes: list[int] = field(default_factory=list)
    relative: list[bool] = field(default_factory=list)

    @property
    def compressed(self) -> bool:
        """Whether any tensor travels compressed."""
        return any(c is not Codec.NONE for c in self.codecs)

    def update_info(self) -> UpdateInfo:
        """This header as an update's description; RecordError when it announces no update."""
        kind = _FROM_WIRE.get(self.kind)
        if kind is None:
            raise RecordError(f"a {pb.TensorKind.Name(self.kind)} header is not an update")
        return UpdateInfo(kind, self.version, self.num_samples, self.metrics)


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
    kind: pb.TensorKind,
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
    specs = (
        [] if tensors is None else [TensorSpec(s.name, a.dtype.name, s.shape) for s, a in zip(tensors.specs, arrays)]
    )
    header = pb.TensorHeader(
        kind=kind,
        version=version,
        tensors=[pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in specs],
        num_samples=num_samples,
        metrics=dict(metrics or {}),
        total_bytes=sum(s.nbytes for s in specs),
    )
    return WireTensors(header, arrays)


def to_wire_compressed(
    kind: pb.TensorKind, version: int, update: CompressedUpdate, *, num_samples: int, metrics: Mapping[str, float]
) -> WireTensors:
    """Header and encoded bytes of a compressed update (each tensor's codec and size in its spec)."""
    tensors = []
    for spec, codec, data in zip(update.tensors.specs, update.codecs, update.payload):
        raw = codec is Codec.NONE
        dtype = np.dtype(spec.dtype).name if raw else "float32"
        tensors.append(
            pb.TensorSpec(
                name=spec.name,
                dtype=dtype,
                shape=list(spec.shape),
                codec=_CODECS[codec],
                encoded_bytes=0 if raw else data.size,
            )
        )
    header = pb.TensorHeader(
        kind=kind,
        version=version,
        tensors=tensors,
        num_samples=num_samples,
        metrics=dict(metrics),
        total_bytes=update.wire_bytes,
        relative=list(update.relative),
    )
    return WireTensors(header, list(update.payload))


def decode_header(h: pb.TensorHeader) -> Header:
    """Validate and decode a header: a known kind, allowed dtypes, sane shapes, sizes that add up;
    a compressed tensor is float32 and declares exactly the bytes its codec takes for its shape
    (checked before any byte is read: no decompression bombs)."""
    if h.kind not in pb.TensorKind.values() or h.kind == pb.TENSOR_KIND_UNSPECIFIED:
        raise RecordError(f"tensor header of unknown kind {h.kind}")
    if h.relative and len(h.relative) != len(h.tensors):
        raise RecordError(f"header flags {len(h.relative)} tensors as relative but has {len(h.tensors)}")
    specs, codecs, sizes = [], [], []
    relative = list(h.relative) or [False] * len(h.tensors)
    for t, rel in zip(h.tensors, relative):
        if t.dtype not in ALLOWED_DTYPES:
            raise RecordError(f"tensor {t.name!r} has dtype {t.dtype!r}, not one of {sorted(ALLOWED_DTYPES)}")
        if any(d < 0 for d in t.shape):
            raise RecordError(f"tensor {t.name!r} has a negative dimension {list(t.shape)}")
        codec = _CODEC_FROM_WIRE.get(t.codec)
        if codec is None:
            raise RecordError(f"tensor {t.name!r} has an unknown codec {t.codec}")
        spec = TensorSpec(t.name, t.dtype, tuple(int(d) for d in t.shape))
        if codec is Codec.NONE:
            if t.encoded_bytes or rel:
                raise RecordError(f"raw tensor {t.name!r} declares encoded bytes or a reference")
            sizes.append(spec.nbytes)
        else:
            if h.kind not in _FROM_WIRE:
                raise RecordError(f"tensor {t.name!r}: only updates travel compressed")
            if t.dtype != "float32":
                raise RecordError(f"compressed tensor {t.name!r} must decode to float32, not {t.dtype}")
            if spec.size > MAX_STREAM_BYTES:
                raise RecordError(f"tensor {t.name!r} of {spec.size} values exceeds the limit")
            check_size(codec, spec.size, int(t.encoded_bytes), t.name)
            sizes.append(int(t.encoded_bytes))
        specs.append(spec)
        codecs.append(codec)
    total = sum(sizes)
    if total != h.total_bytes:
        raise RecordError(f"header says {h.total_bytes} bytes but its tensors need {total}")
    if total > MAX_STREAM_BYTES or sum(s.nbytes for s in specs) > MAX_STREAM_BYTES:
        raise RecordError(f"stream of {total} bytes exceeds the limit of {MAX_STREAM_BYTES}")
    return Header(h.kind, h.version, specs, h.num_samples, dict(h.metrics), codecs, sizes, relative)


class Assembler:
    """Preallocated arrays for a header's specs, filled in place with raw little-endian bytes."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self.arrays = [np.empty(s.shape, dtype=np.dtype(s.dtype).newbyteorder("<")) for s in self.specs]
        self.views = [_byte_view(a) for a in self.arrays]
        self._scratch_buf: np.ndarray | None = None

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

    def fill_encoded(self, read_into: Callable[[Sequence[memoryview]], None], header: Header) -> TensorSet:
        """Like ``fill(check_finite=True)`` for a header whose tensors may be compressed: each
        encoded tensor is read into a scratch buffer (its size was checked by ``decode_header``)
        and decoded into this assembler's array; RecordError for the first malformed or
        non-finite tensor, raised once all bytes are read (the stream stays in step)."""
        bad: str | None = None
        for spec, array, view, codec, size in zip(
            self.specs, self.arrays, self.views, header.codecs, header.wire_sizes
        ):
            if codec is Codec.NONE:
                try:
                    _One(spec, array, view).fill(read_into, check_finite=bad is None)
                except RecordError as e:
                    bad = bad or str(e)
                continue
            scratch = self._scratch(size)
            read_into([scratch.data])
            if bad is None:
                try:
                    decode_into(codec, scratch, array, spec.name)
                except RecordError as e:
                    bad = str(e)
        if bad is not None:
            raise RecordError(bad)
        arrays = [a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")) for a in self.arrays]
        return TensorSet(list(self.specs), arrays)

    def _scratch(self, size: int) -> np.ndarray:
        buf = self._scratch_buf
        if buf is None or buf.size < size:
            buf = np.empty(size, np.uint8)
            self._scratch_buf = buf
        return buf[:size]


class _One(Assembler):
    """One tensor of an assembler, as an assembler (no allocation)."""

    def __init__(self, spec: TensorSpec, array: np.ndarray, view: memoryview) -> None:
        self.specs, self.arrays, self.views = [spec], [array], [view]
        self._scratch_buf = None


__all__ = [
    "MAX_STREAM_BYTES",
    "Assembler",
    "Header",
    "WireTensors",
    "decode_header",
    "to_wire",
    "to_wire_compressed",
    "wire_kind",
]
