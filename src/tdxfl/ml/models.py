"""Keras model builders with deterministic initialisation and stable weight names.

Every layer (and the model) gets an explicit name, so variable paths such as
``small_cnn/conv1/kernel`` are identical in every process regardless of how many models were
built before -- the weight names are the contract between workers and the parameter server.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import keras
import numpy as np
from keras import layers

__all__ = ["MODEL_NAMES", "build_model"]


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Keras (and through it TF, numpy, random) for a build; restore numpy/random after.

    Keras initialisers without an explicit seed draw their seed from Python's ``random``; seeding
    it makes builds reproducible. The global numpy and ``random`` states are put back so building
    a model does not disturb the caller's random streams.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _small_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="input"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense1"),
            layers.Dense(num_classes, activation="softmax", name="output"),
        ],
        name="small_cnn",
    )


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=input_shape, name="input"),
            layers.Flatten(name="flatten"),
            layers.Dense(16, activation="tanh", name="hidden"),
            layers.Dense(num_classes, activation="softmax", name="output"),
        ],
        name="mlp",
    )


def _resnet50(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    return keras.applications.ResNet50(weights=None, input_shape=input_shape, classes=num_classes, include_top=True)


_BUILDERS: dict[str, Callable[[tuple[int, ...], int], keras.Model]] = {
    "small_cnn": _small_cnn,
    "mlp": _mlp,
    "resnet50": _resnet50,
}

#: names accepted by :func:`build_model`
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> keras.Model:
    """Build an uncompiled Keras model; the same ``seed`` gives the same initial weights.

    Models (all end in a softmax, i.e. they output probabilities):

    * ``"small_cnn"`` -- two 3x3 convolutions, max-pool and two dense layers (~0.15M params for
      8x8x1 digits); reaches >= 0.95 test accuracy on digits within a few epochs.
    * ``"resnet50"`` -- ``keras.applications.ResNet50(weights=None)`` (no download), e.g.
      ``input_shape=(32, 32, 3), num_classes=10`` for CIFAR-10 (~23.6M params, BatchNorm).
    * ``"mlp"`` -- flatten, dense(16, tanh), dense softmax (tiny and smooth, for tests).
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}") from None
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"bad input_shape {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    with _seeded(seed):
        return builder(shape, int(num_classes))
