"""Strategies: what workers send and how the parameter server turns their updates into a model.

One ``Strategy`` interface (after Flower's) owns the update contract: what a worker sends
(``make_update``), how an update is weighted, how the mean becomes the next model. Each accepted
update is folded into a running weighted sum as soon as it arrives (``RoundAccumulator``), so the server never holds all updates of a round at once.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import Update, UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.optimizers import Optimizer
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.errors import RecordError

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
    """The whole update contract of a federation, on both sides.

    Worker side: ``make_update`` says what a worker sends for a model version (and how it packs
    gradients and non-trainable state). Server side: ``update_weight`` says how much each
    accepted update counts in the mean, ``apply`` turns the mean into the next global weights, and
    ``steps_per_round`` says how many publish/collect steps make one round.
    """

    #: what workers send
    update_kind: UpdateKind
    #: synchronous steps per round (the PS evaluates and checkpoints after each round)
    steps_per_round: int = 1

    @abc.abstractmethod
    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        """The worker's update for model ``version``, which ``model`` holds now."""

    @abc.abstractmethod
    def update_weight(self, info: UpdateInfo) -> float:
        """The weight of an accepted update in the round's mean (positive)."""

    @abc.abstractmethod
    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        """Update ``global_weights`` in place from the round's mean update."""


class SyncGradients(Strategy):
    """Per-step synchronous data parallelism: average gradients, apply the server optimizer.

    A gradient update carries, aligned with the model's tensors, the gradient for each trainable
    tensor and the worker's current value for each non-trainable one (e.g. batch-norm
    statistics), which the server replaces by the average. Every update counts equally.
    """

    update_kind = UpdateKind.GRADIENTS

    def __init__(self, optimizer: Optimizer, trainable: Sequence[bool], steps_per_round: int = 1) -> None:
        self.optimizer = optimizer
        self.trainable = list(trainable)
        self.steps_per_round = steps_per_round

    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        xb, yb = data.next_batch()
        grads, loss = model.compute_gradients(xb, yb)
        g, others = iter(grads), iter(model.non_trainable_weights())
        arrays = [next(g) if t else next(others) for t in self.trainable]
        info = UpdateInfo(self.update_kind, version, len(xb), {"loss": float(loss)})
        return Update(info, TensorSet(model.specs(), arrays))

    def update_weight(self, info: UpdateInfo) -> float:
        return 1.0

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        weights = [w for w, t in zip(global_weights.arrays, self.trainable) if t]
        grads = [g for g, t in zip(mean_update, self.trainable) if t]
        self.optimizer.apply(weights, grads)
        for i, t in enumerate(self.trainable):
            if not t:
                global_weights.arrays[i][...] = mean_update[i]


@dataclass(frozen=True)
class LocalTraining:
    """How a FedAvg worker trains between two global models."""

    steps: int
    learning_rate: float
    optimizer: str = "sgd"
    seed: int = 0  # the batch order of round ``version`` is seeded with ``seed + version``


class FedAvg(Strategy):
    """Federated averaging: workers train locally from the global model, the new model is the
    sample-weighted mean of their weights."""

    update_kind = UpdateKind.WEIGHTS

    def __init__(self, local: LocalTraining) -> None:
        self.local = local

    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        lt = self.local
        out = model.train_local(
            data.x, data.y, lt.steps, data.batch_size, lt.learning_rate, lt.optimizer, seed=lt.seed + version
        )
        info = UpdateInfo(self.update_kind, version, len(data.x), {"loss": float(out["loss"])})
        return Update(info, TensorSet(model.specs(), model.get_weights()))

    def update_weight(self, info: UpdateInfo) -> float:
        return float(info.num_samples)

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        for w, m in zip(global_weights.arrays, mean_update):
            w[...] = m
