"""Pickle-free byte encoding of a :class:`~tdxfl.engine.records.TensorSet` plus a JSON metadata dict.

Layout::

    magic        8 bytes   b"TDXFLTS1"
    header len   8 bytes   u64 little-endian, at most 64 MiB
    header       JSON (UTF-8): {"version": 1,
                                "tensors": [{"name": str, "dtype": str, "shape": [int, ...]}, ...],
                                "metadata": {...}}
    data         each tensor's raw little-endian, C-order bytes, in header order, nothing after

Encoding yields views of the arrays (no concatenation); decoding allocates each array once and
reads straight into it. Only dtypes in :data:`tdxfl.engine.records.ALLOWED_DTYPES` are accepted,
so decoding never constructs arbitrary objects. Whatever cannot be encoded or decoded raises
``tdxfl.errors.RecordError``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Protocol, TypeAlias

import numpy as np

from tdxfl.engine.records import ALLOWED_DTYPES, TensorSet, TensorSpec
from tdxfl.errors import RecordError

__all__ = [
    "CODEC_MAGIC",
    "CODEC_VERSION",
    "MAX_HEADER_SIZE",
    "decode_tensor_set",
    "encode_tensor_set",
]

CODEC_MAGIC: Final = b"TDXFLTS1"
CODEC_VERSION: Final = 1
MAX_HEADER_SIZE: Final = 64 << 20
MAX_NDIM: Final = 32
#: Default bound on the total tensor bytes a decoder accepts (1 TiB: only a sanity limit).
DEFAULT_MAX_TOTAL_BYTES: Final = 1 << 40
_PREFIX = struct.Struct("<8sQ")
_READ_PIECE = 1 << 20


class _SupportsReadinto(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


ReadSource: TypeAlias = Callable[[int], bytes] | _SupportsReadinto
"""A binary reader with ``readinto`` (file, BytesIO, SealedReader) or a ``read(n)`` callable.

A ``read(n)`` callable may return fewer than ``n`` bytes, and must return b"" at the end.
"""


def _json_default(value: Any) -> Any:
    """Let numpy scalars (e.g. a float32 accuracy) through as the equivalent Python values."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _le_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name).newbyteorder("<")


def encode_tensor_set(ts: TensorSet, metadata: Mapping[str, Any] | None = None) -> Iterator[bytes | memoryview]:
    """Yield the encoding of ``ts`` and ``metadata`` piece by piece: the prefix, then one view per tensor.

    Arrays that are already C-contiguous little-endian are yielded as views without copying;
    others are converted one tensor at a time. ``metadata`` must be JSON-serializable with string
    keys (numpy scalars are accepted and stored as Python numbers). Raises RecordError if specs and arrays disagree or a dtype is not allowed.
    """
    if len(ts.specs) != len(ts.arrays):
        raise RecordError(f"{len(ts.specs)} specs for {len(ts.arrays)} arrays")
    meta = dict(metadata) if metadata is not None else {}
    entries = []
    for spec, array in zip(ts.specs, ts.arrays):
        if not isinstance(spec.name, str):
            raise RecordError(f"tensor name must be a str, got {type(spec.name).__name__}")
        if spec.dtype not in ALLOWED_DTYPES:
            raise RecordError(f"tensor {spec.name!r} has dtype {spec.dtype!r}, not one of {sorted(ALLOWED_DTYPES)}")
        if array.dtype.name != spec.dtype or tuple(array.shape) != tuple(spec.shape):
            raise RecordError(
                f"tensor {spec.name!r}: array is {array.dtype.name}{tuple(array.shape)}, "
                f"spec says {spec.dtype}{tuple(spec.shape)}"
            )
        entries.append({"name": spec.name, "dtype": spec.dtype, "shape": [int(d) for d in spec.shape]})
    try:
        header = json.dumps(
            {"version": CODEC_VERSION, "tensors": entries, "metadata": meta},
            separators=(",", ":"),
            default=_json_default,
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise RecordError(f"metadata is not JSON-serializable: {exc}") from None
    if len(header) > MAX_HEADER_SIZE:
        raise RecordError(f"header of {len(header)} bytes exceeds {MAX_HEADER_SIZE}")
    yield _PREFIX.pack(CODEC_MAGIC, len(header)) + header
    for spec, array in zip(ts.specs, ts.arrays):
        if array.size == 0:
            continue
        contiguous = np.ascontiguousarray(array, dtype=_le_dtype(spec.dtype))
        yield contiguous.reshape(-1).view(np.uint8).data


def _make_reader(source: ReadSource) -> Callable[[memoryview], int]:
    """A function filling as much of a view as possible from ``source``; short only at EOF."""
    readinto = getattr(source, "readinto", None)
    if readinto is not None:

        def fill_readinto(view: memoryview) -> int:
            got = 0
            while got < len(view):
                n = readinto(view[got:])
                if not n:
                    break
                got += n
            return got

        return fill_readinto
    if not callable(source):
        raise TypeError("source must have readinto() or be a read(n) callable")
    read = source

    def fill_read(view: memoryview) -> int:
        got = 0
        while got < len(view):
            data = read(min(len(view) - got, _READ_PIECE))
            if not data:
                break
            if len(data) > len(view) - got:
                raise RecordError("read(n) callable returned more than n bytes")
            view[got : got + len(data)] = data
            got += len(data)
        return got

    return fill_read


def _parse_specs(header: Any, max_total_bytes: int) -> tuple[list[TensorSpec], dict[str, Any]]:
    if not isinstance(header, dict):
        raise RecordError("header is not a JSON object")
    if header.get("version") != CODEC_VERSION:
        raise RecordError(f"unsupported tensor encoding version {header.get('version')!r}")
    tensors = header.get("tensors")
    metadata = header.get("metadata", {})
    if not isinstance(tensors, list):
        raise RecordError("header 'tensors' is not a list")
    if not isinstance(metadata, dict):
        raise RecordError("header 'metadata' is not an object")
    specs: list[TensorSpec] = []
    total = 0
    for i, entry in enumerate(tensors):
        if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
            raise RecordError(f"tensor entry {i} must have exactly name, dtype and shape")
        name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
        if not isinstance(name, str):
            raise RecordError(f"tensor entry {i}: name is not a string")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise RecordError(f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise RecordError(f"tensor {name!r}: shape {shape!r} is not a list of at most {MAX_NDIM} ints >= 0")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        total += nbytes
        if total > max_total_bytes:
            raise RecordError(f"tensors total more than the {max_total_bytes}-byte limit (at {name!r})")
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    return specs, metadata


def decode_tensor_set(
    source: ReadSource, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, require_end: bool = True
) -> tuple[TensorSet, dict[str, Any]]:
    """Decode one tensor set and its metadata from ``source``.

    ``source`` is a binary reader with ``readinto`` (a file, ``io.BytesIO``, a
    :class:`~tdxfl.store.sealed.SealedReader`) or a ``read(n)`` callable with file semantics.
    Each array is allocated once (``np.empty``) and filled in place. With ``require_end`` (the
    default) the source must end right after the last tensor; for a SealedReader this also
    authenticates the final chunk, so a returned tensor set is known complete.

    Raises RecordError on a bad magic, header, dtype or shape, on a size beyond
    ``max_total_bytes``, on truncation, or on trailing data.
    """
    fill = _make_reader(source)
    prefix = bytearray(_PREFIX.size)
    if fill(memoryview(prefix)) != _PREFIX.size:
        raise RecordError("truncated: stream ends inside the prefix")
    magic, header_len = _PREFIX.unpack(prefix)
    if magic != CODEC_MAGIC:
        raise RecordError("not an encoded tensor set (bad magic)")
    if header_len > MAX_HEADER_SIZE:
        raise RecordError(f"header length {header_len} exceeds {MAX_HEADER_SIZE}")
    header_raw = bytearray(header_len)
    if fill(memoryview(header_raw)) != header_len:
        raise RecordError("truncated: stream ends inside the header")
    try:
        header = json.loads(header_raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"header is not valid JSON: {exc}") from None
    specs, metadata = _parse_specs(header, max_total_bytes)
    arrays: list[np.ndarray] = []
    for spec in specs:
        array = np.empty(spec.shape, dtype=_le_dtype(spec.dtype))
        if spec.nbytes:
            view = array.reshape(-1).view(np.uint8).data
            if fill(view) != spec.nbytes:
                raise RecordError(f"truncated: stream ends inside tensor {spec.name!r}")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        arrays.append(array)
    if require_end and fill(memoryview(bytearray(1))):
        raise RecordError("trailing data after the last tensor")
    return TensorSet(specs, arrays), metadata
