"""Built-in task: scikit-learn's digits (8x8 images, 10 classes) with the mlp model (PyTorch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tdxfl.ml.task import Shard
from tdxfl.ml.tasks._shared import digits

MODEL = "mlp"
INPUT_SHAPE = (8, 8, 1)
NUM_CLASSES = 10


def build_model() -> Any:
    """A freshly initialised mlp (the same weights in every process)."""
    from tdxfl.ml.torch_models import build_torch_model

    return build_torch_model(MODEL, INPUT_SHAPE, NUM_CLASSES, seed=0)


def load_data(path: str, role: str, *, shard: Shard | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The PS's evaluation data, or this worker's training data (its shard, in simulation)."""
    return digits(role, shard)
