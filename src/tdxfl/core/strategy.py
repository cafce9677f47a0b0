"""Aggregation strategies: how the parameter server turns worker updates into a new model.

One ``Strategy`` interface (after Flower's): a strategy says what workers must send
(``update_kind``) and folds each accepted update into a running weighted sum as soon as it
arrives (``RoundAccumulator``), so the server never holds all updates of a round at once.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from tdxfl.core.optimizers import Optimizer
from tdxfl.core.records import RecordError, TensorSet, TensorSpec


_BLOCK = 1 << 16


def _add_scaled(acc: np.ndarray, a: np.ndarray, weight: float, *, first: bool) -> None:
    """``acc += weight * a`` in place (``acc = weight * a`` when ``first``), block by block:
    no temporary the size of the tensor."""
    acc_flat, a_flat = acc.reshape(-1), np.asarray(a).reshape(-1)
    if weight == 1.0:
        if first:
            np.copyto(acc_flat, a_flat, casting="unsafe")
        else:
            np.add(acc_flat, a_flat, out=acc_flat, casting="unsafe")
        return
    w = acc.dtype.type(weight)
    if first:
        np.multiply(a_flat, w, out=acc_flat, casting="unsafe")
        return
    scratch = np.empty(min(_BLOCK, acc_flat.size), dtype=acc.dtype)
    for i in range(0, acc_flat.size, _BLOCK):
        part = scratch[: min(_BLOCK, acc_flat.size - i)]
        np.multiply(a_flat[i : i + _BLOCK], w, out=part, casting="unsafe")
        acc_flat[i : i + _BLOCK] += part


class RoundAccumulator:
    """Weighted running sum of updates that all share ``specs``; reusable across rounds.

    Its buffers are allocated once (fresh memory costs page faults on every round otherwise):
    ``reset`` zeroes the sum for the next round, ``mean`` writes into buffers of its own.
    """

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self._sum = [np.empty(s.shape, dtype=np.float64 if s.dtype == "float64" else np.float32) for s in self.specs]
        self._mean = [np.empty(s.shape, dtype=s.dtype) for s in self.specs]
        self.total_weight = 0.0
        self.count = 0

    def reset(self) -> None:
        """Empty the sum for a new round (the last ``mean`` is overwritten by the next one)."""
        self.total_weight = 0.0
        self.count = 0  # the first add overwrites the sum: no need to zero it

    def add(self, update: TensorSet, weight: float, *, finite_checked: bool = False) -> None:
        """Check ``update`` (names, shapes and — unless the caller did — NaN/infinity; RecordError
        names what is wrong), then add ``weight * update`` to the sum in place."""
        if not weight > 0:
            raise RecordError(f"update weight must be positive, got {weight}")
        update.check_compatible(self.specs, check_dtype=False)
        if not finite_checked:
            update.check_finite()
        for acc, a in zip(self._sum, update.arrays):
            _add_scaled(acc, a, weight, first=self.count == 0)
        self.total_weight += weight
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        """The weighted mean of everything added (RecordError when nothing was), in this
        accumulator's own buffers: valid until the next ``mean``."""
        if self.count == 0:
            raise RecordError("no update to aggregate")
        inv = 1.0 / self.total_weight
        for s, out in zip(self._sum, self._mean):
            np.multiply(s, inv, out=out, casting="unsafe")
        return list(self._mean)


class Strategy(abc.ABC):
    """Turns the mean of a round's updates into the next global weights."""

    #: what workers send: "gradients" or "weights"
    update_kind: str

    @abc.abstractmethod
    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        """Update ``global_weights`` in place from the round's mean update."""


class SyncGradients(Strategy):
    """Per-step synchronous data parallelism: average gradients, apply the server optimizer.

    A gradient update carries, aligned with the model's tensors, the gradient for each trainable
    tensor and the worker's current value for each non-trainable one (e.g. batch-norm
    statistics), which the server replaces by the average.
    """

    update_kind = "gradients"

    def __init__(self, optimizer: Optimizer, trainable: Sequence[bool]) -> None:
        self.optimizer = optimizer
        self.trainable = list(trainable)

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        weights = [w for w, t in zip(global_weights.arrays, self.trainable) if t]
        grads = [g for g, t in zip(mean_update, self.trainable) if t]
        self.optimizer.apply(weights, grads)
        for i, t in enumerate(self.trainable):
            if not t:
                global_weights.arrays[i][...] = mean_update[i]


class FedAvg(Strategy):
    """Federated averaging: the new model is the sample-weighted mean of the workers' weights."""

    update_kind = "weights"

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        for w, m in zip(global_weights.arrays, mean_update):
            w[...] = m
