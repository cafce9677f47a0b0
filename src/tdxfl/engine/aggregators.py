"""How the parameter server reduces one step's updates to the tensor list a strategy applies.

Two kinds of aggregator behind one interface (``Aggregator``): the averaging strategies fold
each update into a weighted running sum as it arrives (``strategy.RoundAccumulator``: memory of
one model in the sum's dtype plus one for the result, whatever the number of workers); the
robust rules (after Flower's and NVIDIA FLARE's libraries) need every update of a step at once,
so ``BufferedAggregator`` keeps a copy of each (memory: workers x model size in float32, bounded
by a cap it checks when it is built) and reduces them when the step ends:

* ``CoordinateMedian`` -- the median of every coordinate (Yin et al. 2018);
* ``TrimmedMean`` -- per coordinate, the mean after dropping the ``floor(beta * n)`` largest and
  smallest values (Yin et al. 2018);
* ``Krum`` -- Blanchard et al. 2017: the update closest (sum of squared L2 distances) to its
  ``n - f - 2`` nearest neighbours, or with ``select = m`` (Multi-Krum) the mean of the ``m``
  best-scored updates.

Robust rules ignore the updates' weights: every update counts once (a Byzantine worker could
claim any number of samples). They apply to whatever a step collects: weights in ``fedavg``
mode, gradients (and the non-trainable state packed with them) in ``sync-gradients`` mode.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.errors import ConfigError, FederationError, RecordError

__all__ = [
    "Aggregator",
    "BufferedAggregator",
    "CoordinateMedian",
    "Krum",
    "RobustAggregation",
    "RobustRule",
    "TrimmedMean",
]

_BLOCK = 1 << 16  # columns reduced at once: temporaries stay at n x _BLOCK values


class Aggregator(Protocol):
    """What ``RoundState`` folds a step's accepted updates into (one per federation, reused)."""

    @property
    def count(self) -> int:
        """Updates added since the last ``reset``."""
        ...

    def reset(self) -> None:
        """Forget the updates of the previous step."""
        ...

    def add(self, update: TensorSet, weight: float, *, finite_checked: bool = False) -> None:
        """Check ``update`` (names, shapes and -- unless the caller did -- NaN/infinity; RecordError
        names what is wrong) and take it into the step with ``weight``."""
        ...

    def mean(self) -> list[np.ndarray]:
        """The step's aggregate, one array per spec in the specs' dtypes, in buffers of the
        aggregator's own (valid until the next ``mean``); RecordError when nothing was added."""
        ...


def _buffer_dtype(spec: TensorSpec) -> type[np.floating]:
    return np.float64 if spec.dtype == "float64" else np.float32


class RobustRule(abc.ABC):
    """A reduction of ``n`` buffered updates to one."""

    #: the configuration name (for messages)
    name: str
    #: the fewest updates the rule is defined for
    min_updates: int = 1

    @abc.abstractmethod
    def reduce(self, stacked: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> None:
        """Write the aggregate of ``stacked`` (per tensor, an ``(n, size)`` array: one row per
        update) into ``out`` (per tensor, a flat array of ``size`` values, cast on assignment)."""


class CoordinateMedian(RobustRule):
    """The coordinate-wise median (for an even ``n``, the mean of the two middle values)."""

    name = "median"

    def reduce(self, stacked: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> None:
        for rows, o in zip(stacked, out):
            for i in range(0, rows.shape[1], _BLOCK):
                o[i : i + _BLOCK] = np.median(rows[:, i : i + _BLOCK], axis=0)


class TrimmedMean(RobustRule):
    """The coordinate-wise ``beta``-trimmed mean: per coordinate, drop the ``k = floor(beta * n)``
    largest and ``k`` smallest of the ``n`` values and average the rest (``0 <= beta < 1/2``)."""

    name = "trimmed-mean"

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"trim fraction must be in [0, 0.5), got {beta}")
        self.beta = beta
        self.min_updates = 3  # fewer leave nothing to trim on one side and keep on the other

    def reduce(self, stacked: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> None:
        for rows, o in zip(stacked, out):
            n = rows.shape[0]
            k = int(np.floor(self.beta * n))
            for i in range(0, rows.shape[1], _BLOCK):
                block = np.sort(rows[:, i : i + _BLOCK], axis=0)
                o[i : i + _BLOCK] = block[k : n - k].mean(axis=0, dtype=np.float64)


class Krum(RobustRule):
    """Krum (``select = 1``) and Multi-Krum (Blanchard et al. 2017) for up to ``byzantine`` = f
    Byzantine updates among n.

    Each update's score is the sum of its squared L2 distances (over all tensors) to its
    ``n - f - 2`` nearest other updates; Krum returns the best-scored update, Multi-Krum the plain
    mean of the ``select`` best (``select = 0``, or more than ``n - f``: ``n - f``). Blanchard's
    guarantee needs ``n > 2f + 2``; the score itself needs ``n >= f + 3``.
    """

    def __init__(self, byzantine: int, select: int = 1) -> None:
        if byzantine < 0 or select < 0:
            raise ValueError(f"byzantine and select must be >= 0, got {byzantine} and {select}")
        self.f, self.select = byzantine, select
        self.name = "krum" if select == 1 else "multi-krum"
        self.min_updates = byzantine + 3

    def scores(self, stacked: Sequence[np.ndarray]) -> np.ndarray:
        """Each update's Krum score (float64, one per row)."""
        n = stacked[0].shape[0] if stacked else 0
        d2 = np.zeros((n, n))
        for rows in stacked:
            for i in range(0, rows.shape[1], _BLOCK):
                block = rows[:, i : i + _BLOCK].astype(np.float64)
                for j in range(n):
                    d2[j] += np.square(block - block[j]).sum(axis=1)
        neighbours = n - self.f - 2
        others = np.sort(d2 + np.diag(np.full(n, np.inf)), axis=1)  # a row's own distance sorts last
        return np.asarray(others[:, :neighbours].sum(axis=1))

    def reduce(self, stacked: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> None:
        n = stacked[0].shape[0]
        m = min(self.select or n - self.f, n - self.f)
        chosen = np.argsort(self.scores(stacked), kind="stable")[:m]
        for rows, o in zip(stacked, out):
            for i in range(0, rows.shape[1], _BLOCK):
                o[i : i + _BLOCK] = rows[chosen, i : i + _BLOCK].mean(axis=0, dtype=np.float64)


class BufferedAggregator:
    """Keeps a copy of every update of a step (up to ``capacity``) and reduces them with ``rule``.

    Memory: ``capacity x`` the model's size in float32 (float64 for float64 tensors), allocated once
    and reused, plus one model for the result; ConfigError when the buffer exceeds ``max_bytes``. Weights are ignored (see the module).
    """

    def __init__(self, specs: Sequence[TensorSpec], rule: RobustRule, capacity: int, max_bytes: int) -> None:
        self.specs = list(specs)
        self.rule = rule
        need = capacity * sum(s.size * np.dtype(_buffer_dtype(s)).itemsize for s in self.specs)
        if need > max_bytes:
            raise ConfigError(
                f"strategy {rule.name!r} keeps every update of a step: {capacity} workers x "
                f"{need / capacity / 2**20:.1f} MiB = {need / 2**20:.1f} MiB exceeds strategy.max_buffer_mib = "
                f"{max_bytes / 2**20:.0f}"
            )
        self._rows = [np.empty((capacity, s.size), dtype=_buffer_dtype(s)) for s in self.specs]
        self._mean = [np.empty(s.shape, dtype=s.dtype) for s in self.specs]
        self.capacity = capacity
        self._count = 0

    @property
    def count(self) -> int:
        """Updates buffered since the last ``reset``."""
        return self._count

    def reset(self) -> None:
        """Empty the buffer for a new step."""
        self._count = 0

    def add(self, update: TensorSet, weight: float, *, finite_checked: bool = False) -> None:
        """Check ``update`` and copy it into the next free row (RecordError when all
        ``capacity`` rows are taken); ``weight`` must be positive but is otherwise ignored."""
        if not weight > 0:
            raise RecordError(f"update weight must be positive, got {weight}")
        if self._count == self.capacity:
            raise RecordError(f"more than {self.capacity} updates in one step")
        update.check_compatible(self.specs, check_dtype=False)
        if not finite_checked:
            update.check_finite()
        for rows, a in zip(self._rows, update.arrays):
            np.copyto(rows[self._count], np.asarray(a).reshape(-1), casting="unsafe")
        self._count += 1

    def mean(self) -> list[np.ndarray]:
        """The rule's aggregate of the buffered updates, in the specs' dtypes (RecordError when
        empty, FederationError when the rule needs more updates than the step has)."""
        if self._count == 0:
            raise RecordError("no update to aggregate")
        if self._count < self.rule.min_updates:
            raise FederationError(
                f"{self.rule.name} needs at least {self.rule.min_updates} updates in a step, got {self._count}"
            )
        self.rule.reduce([r[: self._count] for r in self._rows], [m.reshape(-1) for m in self._mean])
        return list(self._mean)


@dataclass(frozen=True)
class RobustAggregation:
    """A robust rule and the bounds of its buffer: a strategy's choice of ``BufferedAggregator``."""

    rule: RobustRule
    #: the most updates one step can hold: the federation's workers
    capacity: int
    #: refuse a buffer larger than this
    max_bytes: int

    def aggregator(self, specs: Sequence[TensorSpec]) -> BufferedAggregator:
        """A buffered aggregator for ``specs`` (ConfigError when it would exceed ``max_bytes``)."""
        return BufferedAggregator(specs, self.rule, self.capacity, self.max_bytes)
