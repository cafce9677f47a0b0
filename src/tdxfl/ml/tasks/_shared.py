"""What the built-in tasks share: their data sets, split for simulation."""

from __future__ import annotations

import numpy as np

from tdxfl.ml.data import Dataset, load_cifar10, load_digits, partition
from tdxfl.ml.task import Shard


def _party_share(data: Dataset, role: str, shard: Shard | None) -> tuple[np.ndarray, np.ndarray]:
    if role == "ps":
        return data.x_test, data.y_test
    if shard is None:
        return data.x_train, data.y_train
    rows = partition(data.y_train, shard.count, shard.scheme, shard.alpha, shard.seed)[shard.index]
    return data.x_train[rows], data.y_train[rows]


def digits(role: str, shard: Shard | None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: the PS gets the test split, a worker its shard of the train split
    (both split with ``shard.seed``, so every party cuts the same way)."""
    return _party_share(load_digits(seed=shard.seed if shard else 0), role, shard)


def cifar10(path: str, role: str, shard: Shard | None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the ``cifar-10-batches-py`` folder at ``path`` (or its parent)."""
    if not path:
        raise ValueError("the CIFAR-10 task needs the data folder: [[party]] data, --data or training.data_path")
    return _party_share(load_cifar10(path), role, shard)
