"""Optimizers that the parameter server applies to the global weights (numpy, in place)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class Optimizer(abc.ABC):
    """Updates a list of float arrays in place from gradients of the same shapes."""

    @abc.abstractmethod
    def apply(self, weights: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """One step: modify ``weights`` in place."""


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


def make_optimizer(name: str, learning_rate: float, momentum: float = 0.9) -> Optimizer:
    """``"sgd"`` (with momentum) or ``"adam"``; ValueError for anything else."""
    if name == "sgd":
        return SGD(learning_rate, momentum)
    if name == "adam":
        return Adam(learning_rate)
    raise ValueError(f"unknown optimizer {name!r} (expected 'sgd' or 'adam')")
