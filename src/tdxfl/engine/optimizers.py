"""Optimizers that the parameter server applies to the global weights (numpy, in place).

``SGD`` and ``Adam`` step on averaged gradients (``sync-gradients``); in ``fedavg`` mode the same
interface steps on the pseudo-gradient ``global - mean of the workers' weights``: ``SGD`` with
momentum is FedAvgM, ``AdaptiveServerOptimizer`` is FedAdagrad, FedAdam and FedYogi.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

import numpy as np

from tdxfl.errors import RecordError

#: what an optimizer (or strategy) carries from step to step, as named arrays for a checkpoint
State = dict[str, np.ndarray]


def _pack(prefix: str, arrays: Sequence[np.ndarray] | None) -> State:
    return {f"{prefix}.{i}": a for i, a in enumerate(arrays or [])}


def _unpack(state: Mapping[str, np.ndarray], prefix: str, like: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    arrays, i = [], 0
    while (a := state.get(f"{prefix}.{i}")) is not None:
        arrays.append(np.array(a, copy=True))
        i += 1
    if like is not None and [a.shape for a in arrays] != [w.shape for w in like]:
        raise RecordError(f"the checkpoint's optimizer state {prefix!r} does not fit this model")
    return arrays


def _only(state: Mapping[str, np.ndarray], keys: set[str], what: str) -> None:
    unknown = {k.split(".")[0] for k in state} - keys
    if unknown:
        raise RecordError(f"the checkpoint holds {what} state {sorted(unknown)} this optimizer does not have")


class Optimizer(abc.ABC):
    """Updates a list of float arrays in place from gradients of the same shapes."""

    @abc.abstractmethod
    def apply(self, weights: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """One step: modify ``weights`` in place."""

    def state(self) -> State:
        """What the optimizer carries from step to step (copies not taken: save before the next
        step), for a checkpoint; empty before its first step."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from ``state`` (what ``state()`` returned); RecordError when it does not fit."""
        _only(state, set(), "optimizer")


class SGD(Optimizer):
    """Stochastic gradient descent with (optional) classical momentum."""

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0) -> None:
        self.lr = learning_rate
        self.momentum = momentum
        self._velocity: list[np.ndarray] | None = None

    def apply(self, weights: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if self.momentum == 0.0:
            for w, g in zip(weights, grads):
                w -= self.lr * g
            return
        if self._velocity is None:
            self._velocity = [np.zeros_like(w) for w in weights]
        for w, g, v in zip(weights, grads, self._velocity):
            v *= self.momentum
            v -= self.lr * g
            w += v

    def state(self) -> State:
        return _pack("velocity", self._velocity)

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        _only(state, {"velocity"}, "optimizer")
        self._velocity = _unpack(state, "velocity") or None


class Adam(Optimizer):
    """Adam (Kingma & Ba), with bias correction."""

    def __init__(
        self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7
    ) -> None:
        self.lr, self.b1, self.b2, self.eps = learning_rate, beta1, beta2, epsilon
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] = []
        self._t = 0

    def apply(self, weights: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if self._m is None:
            self._m = [np.zeros_like(w) for w in weights]
            self._v = [np.zeros_like(w) for w in weights]
        self._t += 1
        step = self.lr * np.sqrt(1 - self.b2**self._t) / (1 - self.b1**self._t)
        for w, g, m, v in zip(weights, grads, self._m, self._v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * np.square(g)
            w -= (step * m / (np.sqrt(v) + self.eps)).astype(w.dtype, copy=False)

    def state(self) -> State:
        if self._m is None:
            return {}
        return {**_pack("m", self._m), **_pack("v", self._v), "t": np.asarray([self._t], np.int64)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        _only(state, {"m", "v", "t"}, "optimizer")
        if not state:
            self._m, self._v, self._t = None, [], 0
            return
        self._m, self._v = _unpack(state, "m"), _unpack(state, "v")
        if len(self._m) != len(self._v) or "t" not in state:
            raise RecordError("the checkpoint's Adam state is incomplete")
        self._t = int(np.asarray(state["t"]).reshape(-1)[0])


_F32_MAX = float(np.finfo(np.float32).max)
_BLOCK = 1 << 16


class AdaptiveServerOptimizer(Optimizer):
    """The server update of Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2.

    With ``grads`` the pseudo-gradient ``g = x - mean of client weights`` (so the paper's
    ``Delta = -g``) and ``rule`` one of ``"adagrad"``, ``"adam"``, ``"yogi"``, every step is::

        m = beta1 * m + (1 - beta1) * g
        v = v + g^2                                         (adagrad)
        v = beta2 * v + (1 - beta2) * g^2                   (adam)
        v = v - (1 - beta2) * g^2 * sign(v - g^2)           (yogi)
        x = x - learning_rate * m / (sqrt(v) + tau)

    (the paper's ``x + eta * m / (sqrt(v) + tau)`` with its ``m = -m``): no bias correction, as in
    the paper; ``m`` starts at 0 and ``v`` at ``tau^2`` (the paper's ``v_{-1} >= tau^2``).

    The state is float32; every step is computed in float64, block by block (no model-sized
    float64 temporary), and ``m`` and ``v`` are clipped to float32's finite range when stored, so
    a huge pseudo-gradient (whose square overflows float32) leaves the state finite and
    ``sqrt(v)`` at most ~1.8e19.
    """

    RULES = ("adagrad", "adam", "yogi")

    def __init__(
        self, rule: str, learning_rate: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if rule not in self.RULES:
            raise ValueError(f"unknown adaptive rule {rule!r} (expected one of {', '.join(self.RULES)})")
        self.rule, self.lr, self.b1, self.b2, self.tau = rule, learning_rate, beta1, beta2, tau
        self._m: list[np.ndarray] = []
        self._v: list[np.ndarray] = []

    def apply(self, weights: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        if not self._m:
            self._m = [np.zeros(w.shape, np.float32) for w in weights]
            self._v = [np.full(w.shape, self.tau**2, np.float32) for w in weights]
        for w, g, m, v in zip(weights, grads, self._m, self._v):
            if not w.flags.c_contiguous:
                raise ValueError("the adaptive server optimizer updates C-contiguous weight arrays in place")
            wf, gf, mf, vf = w.reshape(-1), np.asarray(g).reshape(-1), m.reshape(-1), v.reshape(-1)
            for i in range(0, wf.size, _BLOCK):
                sl = slice(i, i + _BLOCK)
                g64 = gf[sl].astype(np.float64)
                g2 = np.square(g64)
                m64 = self.b1 * mf[sl].astype(np.float64) + (1 - self.b1) * g64
                v64 = vf[sl].astype(np.float64)
                if self.rule == "adagrad":
                    v64 += g2
                elif self.rule == "adam":
                    v64 = self.b2 * v64 + (1 - self.b2) * g2
                else:
                    v64 -= (1 - self.b2) * g2 * np.sign(v64 - g2)
                mf[sl] = np.clip(m64, -_F32_MAX, _F32_MAX)
                vf[sl] = np.clip(v64, 0.0, _F32_MAX)
                step = self.lr * mf[sl].astype(np.float64) / (np.sqrt(vf[sl].astype(np.float64)) + self.tau)
                wf[sl] = wf[sl] - step

    def state(self) -> State:
        return {**_pack("m", self._m), **_pack("v", self._v)}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        _only(state, {"m", "v"}, "optimizer")
        self._m, self._v = _unpack(state, "m"), _unpack(state, "v")
        if len(self._m) != len(self._v):
            raise RecordError("the checkpoint's adaptive optimizer state is incomplete")


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.9) -> Optimizer:
    """``"sgd"`` (with momentum) or ``"adam"``; ValueError for anything else."""
    if name == "sgd":
        return SGD(learning_rate, momentum)
    if name == "adam":
        return Adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r} (expected 'sgd' or 'adam')")
