"""Keras 3 (TensorFlow backend) implementation of :class:`~tdxfl.engine.model.ModelAdapter`.

All TensorFlow-specific code of tdxfl lives here. Gradient, training and evaluation steps are
compiled with ``tf.function(reduce_retracing=True, autograph=False)`` (see :func:`_compile`); the
optimizer used by ``train_local`` is built once per kind and reset (not rebuilt) on every call, so
its compiled step is reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tdxfl.engine.data import batches
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSpec

__all__ = ["KerasAdapter"]

_OPTIMIZERS: dict[str, Callable[[], keras.optimizers.Optimizer]] = {
    "sgd": lambda: keras.optimizers.SGD(learning_rate=0.01),
    "adam": lambda: keras.optimizers.Adam(learning_rate=0.001),
}


def _compile(fn: Callable[..., Any]) -> Any:
    """``tf.function(fn, reduce_retracing=True)`` without AutoGraph.

    AutoGraph never converts Keras code (Keras is on its do-not-convert list, and Keras 3 layers
    and optimizers are written to trace without it, as under JAX), so it would only rewrite the
    adapter's own step functions, which have no tensor-dependent Python control flow. Skipping
    that conversion halves the tracing time of a small model's step (~0.1 s before a worker's
    first gradient, ~0.04 s before the first evaluation).
    """
    return tf.function(fn, reduce_retracing=True, autograph=False)


def _backing_variable(v: keras.Variable) -> Any:
    """The ``tf.Variable`` holding a Keras variable's value (else the Keras variable itself).

    ``set_weights`` validates shapes and dtypes once for all arrays, so it assigns to this
    directly: ``keras.Variable.assign`` converts and checks every value again in Python, which
    is ~40 % of a small model's ``set_weights`` -- paid by every worker on every step.
    """
    inner = getattr(v, "value", None)  # outside an autocast scope: the tf.Variable itself
    return inner if isinstance(inner, tf.Variable) else v


class KerasAdapter(ModelAdapter):
    """Wrap a built Keras model (TensorFlow backend) for the federated core.

    Weights are ``model.weights`` in order, named by their variable ``.path`` (e.g.
    ``small_cnn/conv1/kernel``), which must be unique. ``loss`` is a Keras loss name, a
    ``keras.losses.Loss`` or a callable ``(y_true, y_pred) -> per-sample or mean loss``; with the
    default, labels are integer class ids and the model outputs probabilities. Regularisation
    losses (``model.losses``) are added to the training objective.
    """

    def __init__(self, model: keras.Model, loss: str | Callable[..., Any] = "sparse_categorical_crossentropy") -> None:
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"KerasAdapter needs the tensorflow Keras backend, got {keras.backend.backend()!r} "
                "(unset KERAS_BACKEND or set it to 'tensorflow')"
            )
        if not model.built:
            raise ValueError("the Keras model must be built (give it an Input or call it once)")
        self.model = model
        self._vars = list(model.weights)
        names = [str(v.path) for v in self._vars]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"weight names are not unique: {dupes[:5]}")
        self._specs = [
            TensorSpec(n, np.dtype(v.dtype).name, tuple(int(d) for d in v.shape)) for n, v in zip(names, self._vars)
        ]
        self._mask = [bool(v.trainable) for v in self._vars]
        self._trainable = [v for v, t in zip(self._vars, self._mask) if t]
        self._non_trainable = [v for v, t in zip(self._vars, self._mask) if not t]
        self._assign_to = [_backing_variable(v) for v in self._vars]
        self._loss_fn: Callable[..., Any] = keras.losses.get(loss) if isinstance(loss, str) else loss
        inputs = getattr(model, "inputs", None)
        self._x_dtype = np.dtype(inputs[0].dtype if inputs else "float32")
        self._grad_fn = _compile(self._grad_step)
        self._eval_fn = _compile(self._eval_step)
        self._train_fns: dict[str, tuple[keras.optimizers.Optimizer, Any]] = {}
        self._anchor: list[tf.Variable] = []  # FedProx's w0, made by the first proximal train_local

    # -- weights ---------------------------------------------------------------------------

    def specs(self) -> list[TensorSpec]:
        """Name (variable path), dtype and shape of every entry of ``model.weights``."""
        return list(self._specs)

    def get_weights(self) -> list[np.ndarray]:
        """Copies of all weights, in ``specs`` order."""
        return [np.array(v.numpy(), copy=True) for v in self._vars]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Assign all weights (cast to each variable's dtype); validated before any change."""
        if len(weights) != len(self._vars):
            raise ValueError(f"expected {len(self._vars)} weight arrays, got {len(weights)}")
        arrays = []
        for spec, w in zip(self._specs, weights):
            a = np.asarray(w, dtype=spec.dtype)
            if a.shape != spec.shape:
                raise ValueError(f"weight {spec.name!r} has shape {a.shape}, expected {spec.shape}")
            arrays.append(a)
        for v, a in zip(self._assign_to, arrays):
            v.assign(a)

    def trainable_mask(self) -> list[bool]:
        """Whether each weight (``specs`` order) is trainable."""
        return list(self._mask)

    def non_trainable_weights(self) -> list[np.ndarray]:
        """Copies of the non-trainable weights (e.g. BatchNorm moving mean/variance)."""
        return [np.array(v.numpy(), copy=True) for v in self._non_trainable]

    # -- compiled steps --------------------------------------------------------------------

    def _mean_loss(self, y: tf.Tensor, pred: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.cast(self._loss_fn(y, pred), tf.float32))

    def _objective(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        pred = self.model(x, training=True)
        loss = self._mean_loss(y, pred)
        reg = self.model.losses
        if reg:
            loss = loss + tf.add_n([tf.cast(r, tf.float32) for r in reg])
        return loss

    def _gradients(self, x: tf.Tensor, y: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = self._objective(x, y)
        grads = tape.gradient(loss, self._trainable)
        grads = [
            tf.zeros(v.shape, dtype=v.dtype) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, self._trainable)
        ]
        return grads, loss

    def _grad_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[list[tf.Tensor], tf.Tensor]:
        return self._gradients(x, y)

    def _eval_step(self, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pred = self.model(x, training=False)
        n = tf.cast(tf.shape(x)[0], tf.float32)
        loss_sum = self._mean_loss(y, pred) * n
        hits = tf.equal(tf.argmax(pred, axis=-1, output_type=tf.int32), tf.cast(y, tf.int32))
        return loss_sum, tf.reduce_sum(tf.cast(hits, tf.float32))

    def _train_fn(self, optimizer: str, proximal: bool) -> tuple[keras.optimizers.Optimizer, Any]:
        """The optimizer and compiled ``step(x, y, mu)`` for ``optimizer``; with ``proximal`` the
        step adds FedProx's ``mu * (w - w0)`` to every gradient, ``w0`` in ``self._anchor``."""
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(_OPTIMIZERS)}")
        if proximal and not self._anchor:
            self._anchor = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in self._trainable]
        key = f"{optimizer}+prox" if proximal else optimizer
        if key not in self._train_fns:
            opt = _OPTIMIZERS[optimizer]()
            opt.build(self._trainable)

            def step(x: tf.Tensor, y: tf.Tensor, mu: tf.Tensor) -> tf.Tensor:
                grads, loss = self._gradients(x, y)
                if proximal:
                    grads = [
                        g + tf.cast(mu, g.dtype) * (tf.convert_to_tensor(v) - a)
                        for g, v, a in zip(grads, self._trainable, self._anchor)
                    ]
                opt.apply(grads, self._trainable)
                return loss

            self._train_fns[key] = (opt, _compile(step))
        return self._train_fns[key]

    # -- numpy-facing API ------------------------------------------------------------------

    def _inputs(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xa = np.ascontiguousarray(x, dtype=self._x_dtype)
        ya = np.asarray(y)
        ya = np.ascontiguousarray(ya, dtype=np.int32 if ya.dtype.kind in "iub" else np.float32)
        if len(xa) != len(ya):
            raise ValueError(f"{len(xa)} inputs but {len(ya)} labels")
        if len(xa) == 0:
            raise ValueError("empty batch")
        return xa, ya

    def compute_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Gradients of the mean loss w.r.t. the trainable weights (trainable order), and the loss.

        Runs the model in training mode (BatchNorm moving statistics are updated locally).
        """
        xa, ya = self._inputs(x, y)
        grads, loss = self._grad_fn(xa, ya)
        return [g.numpy() for g in grads], float(loss.numpy())

    def train_local(
        self,
        x: np.ndarray,
        y: np.ndarray,
        steps: int,
        batch_size: int,
        learning_rate: float,
        optimizer: str = "sgd",
        seed: int = 0,
        *,
        proximal_mu: float = 0.0,
    ) -> dict[str, float]:
        """``steps`` optimizer steps on fixed-size shuffled minibatches from the current weights.

        The optimizer state (Adam moments, iteration count) is reset at the start of every call.
        With ``proximal_mu > 0`` (FedProx) every gradient gets ``proximal_mu * (w - w0)``, the
        gradient of ``proximal_mu / 2 * ||w - w0||^2``, ``w0`` the trainable weights at the start
        of the call (kept in variables of their own: one more copy of the trainable weights).
        Returns ``{"loss": mean data loss over the steps, "num_samples": len(x), "steps": steps}``.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        if not (np.isfinite(proximal_mu) and proximal_mu >= 0):
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        xa, ya = self._inputs(x, y)
        opt, step = self._train_fn(optimizer, proximal=proximal_mu > 0)
        for v in opt.variables:
            v.assign(np.zeros(tuple(v.shape), dtype=np.dtype(v.dtype)))
        opt.learning_rate = float(learning_rate)
        for a, v in zip(self._anchor if proximal_mu > 0 else [], self._trainable):
            a.assign(v)
        mu = tf.constant(proximal_mu, tf.float32)
        losses = []
        it = batches(xa, ya, batch_size, seed=seed)
        for _ in range(steps):
            bx, by = next(it)
            losses.append(step(bx, by, mu))
        mean_loss = float(np.mean([float(loss.numpy()) for loss in losses]))
        return {"loss": mean_loss, "num_samples": len(xa), "steps": steps}

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
        """Mean loss and accuracy (argmax vs integer label) in inference mode, in batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        xa, ya = self._inputs(x, y)
        loss_sum = 0.0
        hits = 0.0
        for i in range(0, len(xa), batch_size):
            ls, h = self._eval_fn(xa[i : i + batch_size], ya[i : i + batch_size])
            loss_sum += float(ls.numpy())
            hits += float(h.numpy())
        return loss_sum / len(xa), hits / len(xa)
