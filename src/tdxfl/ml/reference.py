"""numpy-only forward passes of the small built-in models, for checking unsealed weights.

The model owner's trusted node needs no training framework to check an unsealed model: for
``small_cnn`` and ``mlp`` (:mod:`tdxfl.ml.models`), :func:`predict` computes the same function as
the Keras model from the weights alone (by variable name, as in ``model.npz``), so ``tdxfl demo``
measures the final accuracy without importing TensorFlow (seconds of CPU). This is an
independent re-implementation, which also makes it a cross-check of the exported weights; the
tests compare it with Keras on random weights. Other models (``resnet50``) have no reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["REFERENCE_MODELS", "accuracy", "has_reference", "predict"]

Weights = Mapping[str, np.ndarray]


def _conv2d_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras ``Conv2D(padding="same", strides=1)``: NHWC input, HWIO kernel (odd sizes)."""
    kh, kw, cin, cout = kernel.shape
    if x.shape[-1] != cin or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv kernel {kernel.shape} does not fit input {x.shape}")
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    # im2col: (n, h, w, kh, kw, cin) windows, then one matmul with the flattened kernel
    cols = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))  # (n, h, w, cin, kh, kw)
    cols = cols.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, kh * kw * cin)
    return (cols @ kernel.reshape(kh * kw * cin, cout)).reshape(n, h, w, cout) + bias


def _max_pool2(x: np.ndarray) -> np.ndarray:
    """Keras ``MaxPooling2D(2)`` (pool 2, stride 2, ``valid``: odd edges are dropped)."""
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _w(weights: Weights, name: str) -> np.ndarray:
    try:
        return np.asarray(weights[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"weight {name!r} missing") from None


def _small_cnn(weights: Weights, x: np.ndarray) -> np.ndarray:
    p = "small_cnn/"
    h = _relu(_conv2d_same(x, _w(weights, p + "conv1/kernel"), _w(weights, p + "conv1/bias")))
    h = _relu(_conv2d_same(h, _w(weights, p + "conv2/kernel"), _w(weights, p + "conv2/bias")))
    h = _max_pool2(h).reshape(len(x), -1)  # Flatten: NHWC row-major, as Keras
    h = _relu(h @ _w(weights, p + "dense1/kernel") + _w(weights, p + "dense1/bias"))
    return h @ _w(weights, p + "output/kernel") + _w(weights, p + "output/bias")


def _mlp(weights: Weights, x: np.ndarray) -> np.ndarray:
    h = np.tanh(x.reshape(len(x), -1) @ _w(weights, "mlp/hidden/kernel") + _w(weights, "mlp/hidden/bias"))
    return h @ _w(weights, "mlp/output/kernel") + _w(weights, "mlp/output/bias")


_LOGITS: dict[str, Callable[[Weights, np.ndarray], np.ndarray]] = {"small_cnn": _small_cnn, "mlp": _mlp}

#: models :func:`predict` can run
REFERENCE_MODELS = tuple(_LOGITS)


def has_reference(model: str) -> bool:
    """Whether ``model`` (a :func:`tdxfl.ml.models.build_model` name) has a numpy forward pass."""
    return model in _LOGITS


def predict(model: str, weights: Weights, x: np.ndarray) -> np.ndarray:
    """Class probabilities of ``model`` with ``weights`` (variable name -> array) on ``x`` (NHWC).

    Computed in float64, so the argmax matches the float32 Keras model except on near-exact ties.

    Raises:
        ValueError: for a model without a reference, or weights that are missing or do not fit.
    """
    if model not in _LOGITS:
        raise ValueError(f"no numpy reference for model {model!r}; expected one of {', '.join(REFERENCE_MODELS)}")
    try:
        logits = _LOGITS[model](weights, np.asarray(x, dtype=np.float64))
    except ValueError as e:  # shape mismatches in the matmuls / reshapes
        raise ValueError(f"weights do not fit model {model!r} on inputs of shape {np.shape(x)[1:]}: {e}") from None
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(z / z.sum(axis=-1, keepdims=True))


def accuracy(model: str, weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` whose most probable class is the integer label ``y``."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    hits = np.argmax(predict(model, weights, x), axis=-1) == np.asarray(y)
    return float(np.count_nonzero(hits)) / len(x)
