"""Chunked streaming of tensor sets over gRPC: raw little-endian bytes, no pickle.

A stream is one ``TensorFrame`` carrying a ``TensorHeader`` (kind, version, specs) followed by
``chunk`` frames that are consecutive slices of the tensors' concatenated raw bytes. Chunks may
span tensor boundaries; the receiver fills preallocated arrays in place, so a 100 MB update
never exists as one message and is copied once on each side.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tdxfl.core.records import ALLOWED_DTYPES, RecordError, TensorSet, TensorSpec
from tdxfl.transport.proto import tdxfl_pb2 as pb

DEFAULT_CHUNK_BYTES = 1 << 20
#: refuse headers announcing more than this many bytes (a malicious peer must not OOM us)
MAX_STREAM_BYTES = 8 << 30


class StreamError(ValueError):
    """A tensor stream is malformed: bad header, wrong sizes, or frames out of order."""


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
    if wire_dtype is not None and a.dtype.kind == "f" and a.dtype.name != wire_dtype:
        a = a.astype(wire_dtype)
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def _wire_arrays(tensors: TensorSet | None, wire_dtype: str | None) -> tuple[list[TensorSpec], list[np.ndarray]]:
    if tensors is None:
        return [], []
    arrays = [_le(a, wire_dtype) for a in tensors.arrays]
    return [TensorSpec(s.name, a.dtype.name, s.shape) for s, a in zip(tensors.specs, arrays)], arrays


def _header(kind: str, version: int, specs: list[TensorSpec], num_samples: int, metrics: Mapping[str, float] | None) -> pb.TensorFrame:
    return pb.TensorFrame(
        header=pb.TensorHeader(
            kind=kind,
            version=version,
            tensors=[pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in specs],
            num_samples=num_samples,
            metrics=dict(metrics or {}),
            total_bytes=sum(s.nbytes for s in specs),
        )
    )


def _chunk_parts(arrays: Sequence[np.ndarray], chunk_bytes: int) -> Iterator[list[memoryview]]:
    """The tensors' raw bytes cut into consecutive chunks, each as a list of zero-copy views."""
    parts: list[memoryview] = []
    fill = 0
    for a in arrays:
        view = a.reshape(-1).view(np.uint8).data
        pos = 0
        while pos < len(view):
            take = min(chunk_bytes - fill, len(view) - pos)
            parts.append(view[pos : pos + take])
            fill += take
            pos += take
            if fill == chunk_bytes:
                yield parts
                parts, fill = [], 0
    if parts:
        yield parts


def encode_stream(
    kind: str,
    version: int,
    tensors: TensorSet | None = None,
    *,
    num_samples: int = 0,
    metrics: Mapping[str, float] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    wire_dtype: str | None = None,
) -> Iterator[pb.TensorFrame]:
    """Frames for one tensor set: a header, then chunks of at most ``chunk_bytes``.

    ``wire_dtype`` (e.g. ``"float16"``) converts floating-point tensors for transfer.
    """
    specs, arrays = _wire_arrays(tensors, wire_dtype)
    yield _header(kind, version, specs, num_samples, metrics)
    for parts in _chunk_parts(arrays, chunk_bytes):
        yield pb.TensorFrame(chunk=b"".join(parts))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_CHUNK_TAG = b"\x12"  # TensorFrame field 2 (chunk), wire type 2 (length-delimited)


def iter_serialized(
    kind: str,
    version: int,
    tensors: TensorSet,
    *,
    num_samples: int = 0,
    metrics: Mapping[str, float] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    wire_dtype: str | None = None,
) -> Iterator[bytes]:
    """``encode_stream``'s frames already in protobuf wire form, each built with a single copy
    (send them with an identity request/response serializer)."""
    specs, arrays = _wire_arrays(tensors, wire_dtype)
    yield _header(kind, version, specs, num_samples, metrics).SerializeToString()
    for parts in _chunk_parts(arrays, chunk_bytes):
        yield b"".join([_CHUNK_TAG + _varint(sum(len(p) for p in parts)), *parts])


def serialize_stream(kind: str, version: int, tensors: TensorSet, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[bytes]:
    """A model's frames in wire form, for publishing: serialized once, sent to each worker as is."""
    return list(iter_serialized(kind, version, tensors, chunk_bytes=chunk_bytes))


def as_is(frame: bytes) -> bytes:
    """Identity gRPC (de)serializer: tensor frames travel as pre-serialized protobuf bytes."""
    return frame


def parse_frame(raw: bytes) -> pb.TensorHeader | memoryview:
    """One serialized ``TensorFrame``: its header, or a zero-copy view of its chunk bytes.

    Chunk frames are recognised by their canonical encoding (field 2, length-delimited, nothing
    else); anything else must parse as a frame holding a header. StreamError otherwise.
    """
    if raw[:1] == _CHUNK_TAG:
        length = shift = 0
        pos = 1
        while True:
            if pos >= len(raw) or shift > 63:
                raise StreamError("malformed chunk frame (bad length)")
            byte = raw[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if pos + length != len(raw):
            raise StreamError("malformed chunk frame (length does not match)")
        return memoryview(raw)[pos:]
    try:
        frame = pb.TensorFrame.FromString(raw)
    except Exception as e:  # protobuf's DecodeError
        raise StreamError(f"malformed frame: {e}") from None
    if frame.WhichOneof("frame") != "header":
        raise StreamError("frame holds neither a header nor a chunk")
    return frame.header


def decode_header(frame: pb.TensorFrame | pb.TensorHeader) -> Header:
    """Validate and decode the first frame of a stream (or its header message)."""
    if isinstance(frame, pb.TensorFrame):
        if frame.WhichOneof("frame") != "header":
            raise StreamError("stream must start with a header frame")
        h = frame.header
    else:
        h = frame
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
    """Fills preallocated arrays from chunk frames; ``finish`` checks nothing is missing."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self.arrays = [np.empty(s.shape, dtype=np.dtype(s.dtype).newbyteorder("<")) for s in self.specs]
        self._views = [a.reshape(-1).view(np.uint8).data for a in self.arrays]
        self.reset()

    def reset(self) -> None:
        """Start filling the same buffers again (for reuse across streams)."""
        self._index = 0
        self._offset = 0
        self.received = 0

    def feed(self, chunk: bytes | memoryview) -> None:
        """Copy one chunk into place; raise StreamError on excess data."""
        mv = memoryview(chunk)
        pos = 0
        while pos < len(mv):
            while self._index < len(self._views) and self._offset == len(self._views[self._index]):
                self._index += 1
                self._offset = 0
            if self._index >= len(self._views):
                raise StreamError(f"stream carries more bytes than its header announced ({self.received + len(mv) - pos} extra)")
            dst = self._views[self._index]
            n = min(len(dst) - self._offset, len(mv) - pos)
            dst[self._offset : self._offset + n] = mv[pos : pos + n]
            self._offset += n
            pos += n
        self.received += len(mv)

    def finish(self) -> TensorSet:
        """The assembled tensors, in native byte order; StreamError when bytes are missing."""
        expected = sum(s.nbytes for s in self.specs)
        if self.received != expected:
            raise StreamError(f"stream ended after {self.received} of {expected} bytes")
        arrays = [a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")) for a in self.arrays]
        return TensorSet(list(self.specs), arrays)


def decode_stream(frames: Iterable[pb.TensorFrame]) -> tuple[Header, TensorSet]:
    """Read a whole stream (header then chunks) into a TensorSet."""
    it = iter(frames)
    try:
        first = next(it)
    except StopIteration:
        raise StreamError("empty stream: no header frame") from None
    header = decode_header(first)
    asm = Assembler(header.specs)
    for frame in it:
        if frame.WhichOneof("frame") != "chunk":
            raise StreamError("a second header frame in one stream")
        asm.feed(frame.chunk)
    return header, asm.finish()


def as_dtype(tensors: TensorSet, specs: Sequence[TensorSpec]) -> TensorSet:
    """Convert a received set to the expected specs' dtypes (e.g. float16 wire back to float32).

    Raises RecordError when names or shapes differ.
    """
    tensors.check_compatible(specs, check_dtype=False)
    arrays = [a if a.dtype.name == s.dtype else a.astype(s.dtype) for a, s in zip(tensors.arrays, specs)]
    return TensorSet(list(specs), arrays)


__all__ = [
    "Assembler",
    "DEFAULT_CHUNK_BYTES",
    "Header",
    "RecordError",
    "StreamError",
    "as_dtype",
    "as_is",
    "decode_header",
    "decode_stream",
    "encode_stream",
    "iter_serialized",
    "parse_frame",
    "serialize_stream",
]
