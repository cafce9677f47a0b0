"""KerasAdapter's compiled steps (traced without AutoGraph) and its direct weight assignment."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tdxfl.ml.keras_adapter import KerasAdapter
from tdxfl.ml.models import build_model


class _Gated(keras.Model):
    """Branches on a tensor value in Python inside ``call``."""

    def __init__(self) -> None:
        super().__init__(name="gated")
        self.dense = keras.layers.Dense(3, activation="softmax", name="dense")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if tf.reduce_sum(x) > 0:
            return self.dense(x)
        return self.dense(-x)


def test_builtin_models_trace_without_autograph() -> None:
    a = KerasAdapter(build_model("small_cnn", (8, 8, 1), 10, seed=0))
    assert a._grad_fn._autograph is False and a._eval_fn._autograph is False
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    y = np.arange(5) % 10
    grads, loss = a.compute_gradients(x, y)
    with tf.GradientTape() as tape:
        want_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, a.model(x, training=True)))
    want = tape.gradient(want_loss, a.model.trainable_weights)
    assert np.isclose(loss, float(want_loss), rtol=1e-5)
    assert all(np.allclose(g, w.numpy(), rtol=1e-4, atol=1e-6) for g, w in zip(grads, want))
    assert 0.0 <= a.evaluate(x, y)[1] <= 1.0
    assert np.isfinite(a.train_local(x, y, steps=2, batch_size=5, learning_rate=0.01, optimizer="adam")["loss"])


@pytest.mark.parametrize("autograph", [True, False])
def test_autograph_does_not_reach_into_keras_calls(autograph: bool) -> None:
    """Why autograph=False loses nothing: AutoGraph does not convert a Keras model's call either."""
    keras.utils.set_random_seed(0)
    model = _Gated()
    model(np.ones((1, 4), np.float32))
    fn = tf.function(lambda x: model(x), autograph=autograph)
    with pytest.raises(TypeError, match="as a Python `bool`"):
        fn(tf.ones((2, 4)))


def test_set_weights_reaches_the_model() -> None:
    a = KerasAdapter(build_model("mlp", (8, 8, 1), 10, seed=0))
    x = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
    other = KerasAdapter(build_model("mlp", (8, 8, 1), 10, seed=5))
    a.set_weights(other.get_weights())
    np.testing.assert_array_equal(np.asarray(a.model(x)), np.asarray(other.model(x)))
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(a.model.weights, other.get_weights()))
