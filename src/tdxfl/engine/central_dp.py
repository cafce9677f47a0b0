"""Central differential privacy in the aggregator: the parameter server (inside its attested TD)
clips every update and adds Gaussian noise to the mean before the model changes.

Per step, with ``n`` contributing workers, clip norm ``C`` and noise multiplier ``z``:

* each update's change ``d_i = update_i - reference`` (for FedAvg weights: the client's weights
  minus the global model; for sync-gradients: the gradient itself, and the non-trainable state
  minus the global state) is scaled to L2 norm at most ``C`` over all its floating tensors:
  ``d_i * min(1, C / ||d_i||)``;
* the released change is ``sum_i clip(d_i) / n + N(0, (z * C / n)^2)`` per coordinate; the
  strategy then applies ``reference + released change`` as its mean.

Sensitivity: one worker's data is in at most its own update; with zero-out adjacency
(neighbouring runs differ in one worker's clipped change being replaced by zero; the contributor
count ``n`` is unchanged and public: every worker takes part in every step), the clipped sum
changes by at most ``C`` in L2 norm (replace-one adjacency would make it ``2C``), so each step is the Gaussian mechanism with noise multiplier ``z`` on the sum (``z*C``)
and on the mean (``z*C/n``). Every update counts once whatever its sample count (a weight would
scale the sensitivity). Integer tensors (e.g. PyTorch's ``num_batches_tracked``) are not
released: they keep the global model's value. Each step is accounted once, by the injected
``PrivacyAccountant`` (the engine does not depend on an accounting library).

The noise comes from a numpy ``Generator`` seeded with 256 bits from ``secrets`` unless a test
injects one. (numpy's PCG64 is not a cryptographic generator: the seed's secrecy, inside the PS's
TD, is what keeps the noise unpredictable.)
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from tdxfl.engine.aggregators import Aggregator
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import Update, UpdateInfo
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.optimizers import State
from tdxfl.engine.records import TensorSet, TensorSpec, is_floating
from tdxfl.engine.strategy import Strategy
from tdxfl.errors import ConfigError, RecordError

__all__ = ["CentralDP", "DpAggregator", "PrivacyAccountant"]

_BLOCK = 1 << 16
Reference = Sequence[np.ndarray | None]


#: the state key of the releases spent (see ``CentralDP.state``)
_RELEASES = "dp/releases"


class PrivacyAccountant(Protocol):
    """Tracks the privacy spent by the releases of one Gaussian mechanism."""

    #: releases recorded so far
    releases: int

    def spend(self) -> None:
        """Record one release (one step's noisy mean)."""
        ...

    def epsilon(self) -> float:
        """The epsilon spent by all releases so far, at the accountant's delta."""
        ...


def _sum_dtype(spec: TensorSpec) -> type[np.floating]:
    return np.float64 if spec.dtype == "float64" else np.float32


class DpAggregator:
    """Sums the clipped changes of a step's updates and releases their noisy mean (see the
    module). Memory: one model in float32 for the sum and one for the result, as the
    ``RoundAccumulator``. ``reference()`` gives the current step's reference tensors."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        clip_norm: float,
        noise_multiplier: float,
        reference: Callable[[], Reference],
        accountant: PrivacyAccountant,
        rng: np.random.Generator,
    ) -> None:
        if not (clip_norm > 0 and noise_multiplier > 0):
            raise ValueError(f"clip norm and noise multiplier must be positive, got {clip_norm}, {noise_multiplier}")
        self.specs = list(specs)
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self._reference, self._accountant, self._rng = reference, accountant, rng
        self._released = [is_floating(np.dtype(s.dtype)) for s in self.specs]
        self._sum = [np.empty(s.size, dtype=_sum_dtype(s)) for s in self.specs]
        self._mean = [np.empty(s.shape, dtype=s.dtype) for s in self.specs]
        self._count = 0

    @property
    def count(self) -> int:
        """Updates added since the last ``reset``."""
        return self._count

    def reset(self) -> None:
        """Empty the sum for a new step."""
        self._count = 0

    def add(self, update: TensorSet, weight: float, *, finite_checked: bool = False) -> None:
        """Check ``update``, clip its change to ``clip_norm`` and add it to the sum; ``weight``
        must be positive but is ignored (every update counts once)."""
        if not weight > 0:
            raise RecordError(f"update weight must be positive, got {weight}")
        update.check_compatible(self.specs, check_dtype=False)
        if not finite_checked:
            update.check_finite()
        reference = self._reference()
        sq = 0.0
        for a, r, released in zip(update.arrays, reference, self._released):
            if released:
                for d in _changes(a, r, np.float64):
                    sq += float(np.dot(d, d))
        norm = math.sqrt(sq)
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        for acc, a, r, released in zip(self._sum, update.arrays, reference, self._released):
            if not released:
                continue
            i = 0
            for d in _changes(a, r, acc.dtype):
                d *= scale
                if self._count == 0:
                    acc[i : i + d.size] = d
                else:
                    acc[i : i + d.size] += d
                i += d.size
        self._count += 1

    def mean(self) -> list[np.ndarray]:
        """``reference + sum / n + noise`` with noise std ``noise_multiplier * clip_norm / n``, in
        this aggregator's own buffers (valid until the next ``mean``); one release is accounted."""
        if self._count == 0:
            raise RecordError("no update to aggregate")
        n = self._count
        std = self.noise_multiplier * self.clip_norm / n
        for acc, out, r, released in zip(self._sum, self._mean, self._reference(), self._released):
            flat = out.reshape(-1)
            if not released:
                flat[...] = 0 if r is None else r.reshape(-1)
                continue
            ref = None if r is None else r.reshape(-1)
            for i in range(0, acc.size, _BLOCK):
                block = acc[i : i + _BLOCK] / n
                block += std * self._rng.standard_normal(block.size, dtype=block.dtype)
                if ref is not None:
                    block += ref[i : i + _BLOCK]
                flat[i : i + _BLOCK] = block
        self._accountant.spend()
        return list(self._mean)


def _changes(a: np.ndarray, r: np.ndarray | None, dtype: type[np.floating] | np.dtype) -> Iterator[np.ndarray]:
    """``a - r`` (``a`` when ``r`` is None) flattened, block by block, each a fresh ``dtype`` array."""
    af = np.asarray(a).reshape(-1)
    rf = None if r is None else r.reshape(-1)
    for i in range(0, af.size, _BLOCK):
        d = af[i : i + _BLOCK].astype(dtype)
        if rf is not None:
            d -= rf[i : i + _BLOCK]
        yield d


class CentralDP(Strategy):
    """``inner`` with central differential privacy: the server clips every update's change and
    adds Gaussian noise to the mean (see the module); workers do what ``inner``'s do.

    ``inner`` must average (a robust rule's sensitivity is not the mean's: ConfigError).
    ``epsilon()`` is the accountant's after every release so far.
    """

    def __init__(
        self,
        inner: Strategy,
        clip_norm: float,
        noise_multiplier: float,
        accountant: PrivacyAccountant,
        *,
        rng: np.random.Generator | None = None,
    ) -> None:
        if inner.robust is not None:
            raise ConfigError(
                f"central differential privacy calibrates noise to the mean: it cannot be combined with "
                f"{inner.robust.rule.name!r} aggregation"
            )
        self.inner = inner
        self.update_kind = inner.update_kind
        self.steps_per_round = inner.steps_per_round
        self.clip_norm, self.noise_multiplier = clip_norm, noise_multiplier
        self.accountant = accountant
        self.rng = rng if rng is not None else np.random.default_rng(secrets.randbits(256))
        self._reference: list[np.ndarray | None] | None = None

    def make_update(self, model: ModelAdapter, data: LocalData, version: int) -> Update:
        return self.inner.make_update(model, data, version)

    def update_weight(self, info: UpdateInfo) -> float:
        """1: every update counts once (the sensitivity bound assumes it)."""
        return 1.0

    def begin_step(self, global_weights: TensorSet) -> None:
        """Remember the step's reference tensors (the global model, as ``inner`` relates updates to it)."""
        self._reference = self.inner.update_reference(global_weights)

    def _current_reference(self) -> Reference:
        if self._reference is None:
            raise RecordError("central DP aggregates relative to the global model: no step has begun")
        return self._reference

    def make_aggregator(self, specs: Sequence[TensorSpec]) -> Aggregator:
        return DpAggregator(
            specs, self.clip_norm, self.noise_multiplier, self._current_reference, self.accountant, self.rng
        )

    def apply(self, global_weights: TensorSet, mean_update: list[np.ndarray]) -> None:
        self.inner.apply(global_weights, mean_update)

    def epsilon(self) -> float | None:
        return self.accountant.epsilon()

    def state(self) -> State:
        """The inner strategy's state and the releases spent so far (the noise generator is not
        kept: a resumed PS draws fresh noise from the OS)."""
        return {**self.inner.state(), _RELEASES: np.asarray([self.accountant.releases], np.int64)}

    def load_state(self, state: Mapping[str, np.ndarray], *, after_crash: bool = False) -> None:
        """Restore the inner state and the releases spent; ``after_crash`` also charges the whole
        lost round's ``steps_per_round`` releases: its steps may have been published before the
        crash, and what was released stays released."""
        if _RELEASES not in state:
            raise RecordError("the checkpoint does not say how much privacy budget was spent")
        self.inner.load_state({k: v for k, v in state.items() if k != _RELEASES})
        spent = int(np.asarray(state[_RELEASES]).reshape(-1)[0]) + (self.steps_per_round if after_crash else 0)
        for _ in range(spent - self.accountant.releases):
            self.accountant.spend()
