"""Typed records shared by every layer: named tensors as numpy arrays.

A model's state is an ordered list of ``Tensor`` entries; the order and specs (name, dtype,
shape) are the contract between workers and the parameter server. Nothing here touches the wire
or the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ml_dtypes  # registers numpy's "bfloat16" dtype
import numpy as np

from tdxfl.errors import RecordError

#: dtypes allowed on the wire and in sealed files (little-endian raw bytes)
ALLOWED_DTYPES = frozenset({"bfloat16", "float16", "float32", "float64", "int32", "int64", "uint8"})
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_CHECK_BLOCK = 1 << 16


def is_floating(dtype: np.dtype) -> bool:
    """True for IEEE floating-point dtypes, bfloat16 included (numpy files it under kind "V")."""
    return dtype.kind == "f" or dtype == BFLOAT16


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (numpy name) and shape of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        """Bytes of the raw little-endian encoding."""
        return self.size * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> TensorSpec:
        """The spec of ``array`` under ``name``."""
        return cls(name, array.dtype.name, tuple(int(d) for d in array.shape))


@dataclass
class TensorSet:
    """An ordered, named list of numpy arrays (model weights, gradients or an update)."""

    specs: list[TensorSpec]
    arrays: list[np.ndarray]

    @classmethod
    def from_arrays(cls, names: Sequence[str], arrays: Sequence[np.ndarray]) -> TensorSet:
        """Build from parallel lists of names and arrays."""
        if len(names) != len(arrays):
            raise RecordError(f"{len(names)} names for {len(arrays)} arrays")
        arrs = [np.asarray(a) for a in arrays]
        return cls([TensorSpec.of(n, a) for n, a in zip(names, arrs)], arrs)

    @property
    def nbytes(self) -> int:
        """Total raw size in bytes."""
        return sum(s.nbytes for s in self.specs)

    def check_compatible(self, expected: Sequence[TensorSpec], *, check_dtype: bool = True) -> None:
        """Raise RecordError naming the first tensor whose name, shape or dtype differs."""
        if len(self.specs) != len(expected):
            raise RecordError(f"expected {len(expected)} tensors, got {len(self.specs)}")
        for got, want in zip(self.specs, expected):
            if got.name != want.name:
                raise RecordError(f"tensor {want.name!r} expected, got {got.name!r}")
            if got.shape != want.shape:
                raise RecordError(f"tensor {want.name!r} has shape {got.shape}, expected {want.shape}")
            if check_dtype and got.dtype != want.dtype:
                raise RecordError(f"tensor {want.name!r} has dtype {got.dtype}, expected {want.dtype}")

    def check_finite(self) -> None:
        """Raise RecordError naming the first tensor holding NaN or infinity."""
        for spec, a in zip(self.specs, self.arrays):
            if not is_floating(a.dtype):
                continue
            flat = a.reshape(-1)
            for i in range(0, flat.size, _CHECK_BLOCK):  # blockwise: no tensor-sized temporary
                if not np.isfinite(flat[i : i + _CHECK_BLOCK]).all():
                    raise RecordError(f"tensor {spec.name!r} holds NaN or infinite values")

    def cast_to(self, specs: Sequence[TensorSpec]) -> TensorSet:
        """This set converted to ``specs``' dtypes (e.g. a float16 wire form back to float32);
        arrays that already match are not copied. RecordError when names or shapes differ."""
        self.check_compatible(specs, check_dtype=False)
        arrays = [a if a.dtype.name == s.dtype else a.astype(s.dtype) for a, s in zip(self.arrays, specs)]
        return TensorSet(list(specs), arrays)
