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


class RoundAccumulator:
    """Weighted running sum of updates that all share ``specs``."""

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self._sum = [np.zeros(s.shape, dtype=np.float64 if s.dtype == "float64" else np.float32) for s in self.specs]
        self.total_weight = 0.0
        self.count = 0

    def validate(self, update: TensorSet) -> None:
        """Raise RecordError when ``update`` has the wrong names/shapes or non-finite values."""
        update.check_compatible(self.specs, check_dtype=False)
        update.check_finite()

    def add(self, update: TensorSet, weight: float) -> None:
        """Validate, then add ``weight * update`` to the sum in place."""
        if not weight > 0:
            raise RecordError(f"update weight must be positive, got {weight}")
        self.validate(update)
        for acc, a in zip(self._sum, update.arrays):
            acc += np.float32(weight) * a if acc.dtype == np.float32 else weight * a
        self.total_weight += weight
        self.count += 1

    def mean(self) -> list[np.ndarray]:
        """The weighted mean of everything added (RecordError when nothing was)."""
        if self.count == 0:
            raise RecordError("no update to aggregate")
        inv = 1.0 / self.total_weight
        return [(s * inv).astype(spec.dtype, copy=False) for s, spec in zip(self._sum, self.specs)]


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
