"""Built-in task: CIFAR-10 (32x32 colour images, 10 classes) with the resnet50 model (Keras)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tdxfl.ml.task import Shard
from tdxfl.ml.tasks._shared import cifar10

MODEL = "resnet50"
INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def build_model() -> Any:
    """A freshly initialised resnet50 (the same weights in every process)."""
    from tdxfl.ml.models import build_model as build

    return build(MODEL, INPUT_SHAPE, NUM_CLASSES, seed=0)


def load_data(path: str, role: str, *, shard: Shard | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The PS's evaluation data, or this worker's training data (its shard, in simulation)."""
    return cifar10(path, role, shard)
