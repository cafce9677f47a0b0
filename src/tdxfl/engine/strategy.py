"""Strategies: what workers send and how the parameter server turns their updates into a model.

One ``Strategy`` interface (after Flower's) owns the update contract: what a worker sends
(``make_update``), how an update is weighted, how a step's updates are aggregated
(``make_aggregator``) and how the aggregate becomes the next model (``apply``). The averaging
strategies fold each accepted update into a running weighted sum as soon as it arrives
(``RoundAccumulator``), so the server never holds all updates of a round at once; the robust
ones (:mod:`.aggregators`) buffer a step's updates, within a memory cap.

Strategies here: ``SyncGradients`` (per-step gradients, the server's optimizer), ``FedAvg``
(local training, the sample-weighted mean of weights; with ``LocalTraining.proximal_mu`` it is
FedProx) and ``FedOpt`` (FedAvgM, FedAdagrad, FedAdam, FedYogi: a server optimizer on the
pseudo-gradient). Central differential privacy wraps any averaging strategy
(:mod:`.central_dp`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tdxfl.engine.aggregators import Aggregator, RobustAggregation
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import Update, UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.optimizers import Optimizer, State
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
    #: a robust rule instead of the weighted mean (None: the mean)
    robust: RobustAggregation | None = None

    @abc.abstractmethod
    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        """The worker's update for model ``version``, which ``model`` holds now."""

    @abc.abstractmethod
    def update_weight(self, info: UpdateInfo) -> float:
        """The weight of an accepted update in the round's mean (positive)."""

    @abc.abstractmethod
    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        """Update ``global_weights`` in place from the round's mean update."""

    @property
    def min_updates(self) -> int:
        """The fewest updates a step can be aggregated from (a robust rule's minimum, else 1):
        the PS waits, then fails, rather than aggregate fewer."""
        return self.robust.rule.min_updates if self.robust else 1

    def make_aggregator(self, specs: Sequence[TensorSpec]) -> Aggregator:
        """What the server folds a step's updates into: the weighted running sum, or the robust
        rule's buffer (ConfigError when that would exceed its memory cap)."""
        return self.robust.aggregator(specs) if self.robust else RoundAccumulator(specs)

    def begin_step(self, global_weights: TensorSet) -> None:
        """Called by the server's loop before it publishes ``global_weights`` for a step (they do
        not change until the step's ``apply``); nothing by default."""
        return None

    def update_reference(self, global_weights: TensorSet) -> list[np.ndarray | None]:
        """What each tensor of an update is relative to: its change is ``update - reference``,
        None where the tensor is a change already (a gradient). By default every tensor is a
        weight, relative to the global model."""
        return list(global_weights.arrays)

    def epsilon(self) -> float | None:
        """The differential-privacy epsilon spent so far, None when the strategy adds no noise."""
        return None

    def state(self) -> State:
        """What the server side carries from step to step (e.g. its optimizer's moments), as
        named arrays for a resumable checkpoint; read it between steps."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray], *, after_crash: bool = False) -> None:
        """Continue from ``state`` (what ``state()`` returned); RecordError when it does not fit.
        ``after_crash``: the round after the checkpoint was lost part way (see ``CentralDP``)."""
        if state:
            raise RecordError(f"the checkpoint holds strategy state {sorted(state)[:3]} this strategy does not have")


def _optimizer_state(optimizer: Optimizer) -> State:
    return {f"optimizer/{k}": v for k, v in optimizer.state().items()}


def _load_optimizer_state(optimizer: Optimizer, state: Mapping[str, np.ndarray]) -> None:
    if any(not k.startswith("optimizer/") for k in state):
        raise RecordError("the checkpoint holds strategy state this strategy does not have")
    optimizer.load_state({k.removeprefix("optimizer/"): v for k, v in state.items()})


class SyncGradients(Strategy):
    """Per-step synchronous data parallelism: average gradients, apply the server optimizer.

    A gradient update carries, aligned with the model's tensors, the gradient for each trainable
    tensor and the worker's current value for each non-trainable one (e.g. batch-norm
    statistics), which the server replaces by the average. Every update counts equally.
    """

    update_kind = UpdateKind.GRADIENTS

    def __init__(
        self,
        optimizer: Optimizer,
        trainable: Sequence[bool],
        steps_per_round: int = 1,
        *,
        robust: RobustAggregation | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.trainable = list(trainable)
        self.steps_per_round = steps_per_round
        self.robust = robust

    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        xb, yb = data.next_batch()
        grads, loss = model.compute_gradients(xb, yb)
        g, others = iter(grads), iter(model.non_trainable_weights())
        arrays = [next(g) if t else next(others) for t in self.trainable]
        info = UpdateInfo(self.update_kind, version, len(xb), {"loss": float(loss)})
        return Update(info, TensorSet(model.specs(), arrays))

    def update_weight(self, info: UpdateInfo) -> float:
        return 1.0

    def update_reference(self, global_weights: TensorSet) -> list[np.ndarray | None]:
        """Gradients are changes already; the non-trainable state is relative to the global one."""
        return [None if t else w for w, t in zip(global_weights.arrays, self.trainable)]

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        weights = [w for w, t in zip(global_weights.arrays, self.trainable) if t]
        grads = [g for g, t in zip(mean_update, self.trainable) if t]
        self.optimizer.apply(weights, grads)
        for i, t in enumerate(self.trainable):
            if not t:
                global_weights.arrays[i][...] = mean_update[i]

    def state(self) -> State:
        return _optimizer_state(self.optimizer)

    def load_state(self, state: Mapping[str, np.ndarray], *, after_crash: bool = False) -> None:
        _load_optimizer_state(self.optimizer, state)


@dataclass(frozen=True)
class LocalTraining:
    """How a FedAvg worker trains between two global models."""

    steps: int
    learning_rate: float
    optimizer: str = "sgd"
    seed: int = 0  # the batch order of round ``version`` is seeded with ``seed + version``
    #: FedProx (Li et al. 2020): add ``proximal_mu / 2 * ||w - w_global||^2`` to the local loss
    proximal_mu: float = 0.0


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017): workers train locally from the global model, the
    new model is the sample-weighted mean of their weights (or a ``robust`` rule's aggregate).
    With ``local.proximal_mu > 0`` the workers' local objective has FedProx's proximal term."""

    update_kind = UpdateKind.WEIGHTS

    def __init__(self, local: LocalTraining, *, robust: RobustAggregation | None = None) -> None:
        self.local = local
        self.robust = robust

    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        """Train ``model`` locally and send its weights; ``proximal_mu`` is passed only when set,
        so a task's own adapter written before FedProx still serves plain FedAvg."""
        lt = self.local
        prox = {"proximal_mu": lt.proximal_mu} if lt.proximal_mu else {}
        out = model.train_local(
            data.x, data.y, lt.steps, data.batch_size, lt.learning_rate, lt.optimizer, seed=lt.seed + version, **prox
        )
        info = UpdateInfo(self.update_kind, version, len(data.x), {"loss": float(out["loss"])})
        return Update(info, TensorSet(model.specs(), model.get_weights()))

    def update_weight(self, info: UpdateInfo) -> float:
        return float(info.num_samples)

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        for w, m in zip(global_weights.arrays, mean_update):
            w[...] = m


class FedOpt(FedAvg):
    """FedAvg's workers with a server optimizer (Reddi et al. 2021's FedOpt; Hsu et al. 2019's
    FedAvgM is ``optimizer = SGD(learning_rate, momentum)``).

    The optimizer steps the trainable tensors on the pseudo-gradient ``global - mean``, the
    sample-weighted mean of the workers' weights; non-trainable tensors (e.g. batch-norm
    statistics) take the mean, as in FedAvg. ``SGD(1.0)`` without momentum is FedAvg.
    """

    def __init__(self, local: LocalTraining, optimizer: Optimizer, trainable: Sequence[bool]) -> None:
        super().__init__(local)
        self.optimizer = optimizer
        self.trainable = list(trainable)

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        weights, pseudo = [], []
        for w, m, t in zip(global_weights.arrays, mean_update, self.trainable):
            if t:
                weights.append(w)
                pseudo.append(np.subtract(w, m, dtype=np.float32 if w.dtype != np.float64 else np.float64))
            else:
                w[...] = m
        self.optimizer.apply(weights, pseudo)

    def state(self) -> State:
        return _optimizer_state(self.optimizer)

    def load_state(self, state: Mapping[str, np.ndarray], *, after_crash: bool = False) -> None:
        _load_optimizer_state(self.optimizer, state)
