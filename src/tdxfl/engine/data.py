"""A worker's local training data, as the engine draws from it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LocalData", "batches"]


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield shuffled ``(x, y)`` minibatches forever, all of exactly ``batch_size`` samples.

    Epochs are reshuffled and chained, so a batch may straddle an epoch boundary (no short last
    batch: a fixed shape keeps compiled training steps from retracing). If ``batch_size`` exceeds
    the number of samples, a batch repeats samples.
    """
    n = len(x)
    if n == 0:
        raise ValueError("cannot draw batches from an empty data set")
    if len(y) != n:
        raise ValueError(f"{n} inputs but {len(y)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    while True:
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        yield x[idx], y[idx]


@dataclass
class LocalData:
    """This worker's samples, its batch size, the seed of its batch order, and its own validation
    samples (if any: the worker then evaluates every round's global model on them)."""

    x: np.ndarray
    y: np.ndarray
    batch_size: int
    seed: int = 0
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    _batches: Iterator[tuple[np.ndarray, np.ndarray]] | None = field(default=None, init=False, repr=False)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next shuffled minibatch (see ``batches``)."""
        if self._batches is None:
            self._batches = batches(self.x, self.y, self.batch_size, seed=self.seed)
        return next(self._batches)
