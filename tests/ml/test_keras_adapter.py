"""KerasAdapter: weights round trip, gradients (finite differences, numpy SGD), training, eval."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from tdxfl.engine.data import batches
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.ml.data import Dataset, load_digits
from tdxfl.ml.keras_adapter import KerasAdapter
from tdxfl.ml.models import build_model


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def _mlp(seed: int = 0) -> KerasAdapter:
    return KerasAdapter(build_model("mlp", (8, 8, 1), 10, seed=seed))


def test_is_a_model_adapter() -> None:
    assert isinstance(_mlp(), ModelAdapter)
    with pytest.raises(TypeError):
        ModelAdapter()  # type: ignore[abstract]


def test_specs_and_weight_round_trip() -> None:
    a = _mlp(seed=0)
    specs = a.specs()
    assert [s.name for s in specs] == [
        "mlp/hidden/kernel",
        "mlp/hidden/bias",
        "mlp/output/kernel",
        "mlp/output/bias",
    ]
    assert specs[0] == TensorSpec("mlp/hidden/kernel", "float32", (64, 16))
    assert a.trainable_mask() == [True] * 4 and a.non_trainable_weights() == []
    w = a.get_weights()
    TensorSet.from_arrays([s.name for s in specs], w).check_compatible(specs)
    a.get_tensor_set().check_compatible(specs)
    # get_weights returns copies
    w[0][...] = 0.0
    assert np.abs(a.get_weights()[0]).sum() > 0
    # set from another model's weights (float64 input is cast)
    other = _mlp(seed=7).get_weights()
    a.set_weights([x.astype(np.float64) for x in other])
    got = a.get_weights()
    assert all(g.dtype == np.float32 and np.array_equal(g, o) for g, o in zip(got, other))


def test_set_weights_validates_before_changing() -> None:
    a = _mlp()
    before = a.get_weights()
    with pytest.raises(ValueError, match="expected 4"):
        a.set_weights(before[:3])
    bad = [np.ones_like(x) for x in before]
    bad[2] = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match="mlp/output/kernel"):
        a.set_weights(bad)
    assert all(np.array_equal(x, y) for x, y in zip(before, a.get_weights()))


def test_gradients_match_finite_differences(digits: Dataset) -> None:
    a = _mlp(seed=1)
    x, y = digits.x_train[:64], digits.y_train[:64]
    w0 = a.get_weights()
    grads, loss = a.compute_gradients(x, y)
    assert [g.shape for g in grads] == [s.shape for s in a.specs()]
    assert all(g.dtype == np.float32 for g in grads)
    assert all(np.array_equal(p, q) for p, q in zip(w0, a.get_weights()))  # weights untouched
    assert loss == pytest.approx(a.evaluate(x, y)[0], rel=1e-5)
    eps = 1e-2
    for t in range(len(w0)):
        idx = np.unravel_index(int(np.argmax(np.abs(grads[t]))), grads[t].shape)
        losses = []
        for sign in (+1, -1):
            w = [v.copy() for v in w0]
            w[t][idx] += sign * eps
            a.set_weights(w)
            losses.append(a.compute_gradients(x, y)[1])
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert numeric == pytest.approx(float(grads[t][idx]), rel=2e-2, abs=2e-4), (t, idx)
    a.set_weights(w0)


def test_numpy_sgd_with_adapter_gradients_learns_digits(digits: Dataset) -> None:
    """The parameter-server pattern: workers give gradients, a numpy optimizer applies them."""
    a = KerasAdapter(build_model("small_cnn", digits.input_shape, digits.num_classes, seed=0))
    w = a.get_weights()
    mask = a.trainable_mask()
    assert all(mask)
    it = batches(digits.x_train, digits.y_train, 32, seed=0)
    lr = 0.1
    start = time.perf_counter()
    acc = 0.0
    for step in range(1, 501):
        bx, by = next(it)
        grads, loss = a.compute_gradients(bx, by)
        assert np.isfinite(loss)
        w = [wi - lr * gi for wi, gi in zip(w, grads)]
        a.set_weights(w)
        if step % 100 == 0:
            acc = a.evaluate(digits.x_test, digits.y_test)[1]
            if step >= 300 and acc >= 0.9:
                break
    elapsed = time.perf_counter() - start
    assert acc >= 0.9, acc
    assert elapsed < 30, elapsed


def test_train_local_is_seeded_and_resets_optimizer(digits: Dataset) -> None:
    x, y = digits.x_train[:256], digits.y_train[:256]
    a = _mlp(seed=0)
    w0 = a.get_weights()
    loss0 = a.evaluate(x, y)[0]
    r1 = a.train_local(x, y, steps=20, batch_size=16, learning_rate=0.01, optimizer="adam", seed=4)
    w1 = a.get_weights()
    assert r1["num_samples"] == 256 and r1["steps"] == 20 and np.isfinite(r1["loss"])
    assert a.evaluate(x, y)[0] < loss0
    # same start, same seed -> same result (Adam moments and step count were reset)
    a.set_weights(w0)
    r2 = a.train_local(x, y, steps=20, batch_size=16, learning_rate=0.01, optimizer="adam", seed=4)
    assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-6)
    assert all(np.allclose(p, q, atol=1e-6) for p, q in zip(w1, a.get_weights()))
    # a different seed gives a different batch order
    a.set_weights(w0)
    a.train_local(x, y, steps=20, batch_size=16, learning_rate=0.01, optimizer="adam", seed=5)
    assert not all(np.allclose(p, q, atol=1e-6) for p, q in zip(w1, a.get_weights()))
    # one plain SGD step equals w - lr * grad on that batch
    a.set_weights(w0)
    bx, by = next(batches(x, y, 16, seed=9))
    g, _ = a.compute_gradients(bx, by)
    a.train_local(x, y, steps=1, batch_size=16, learning_rate=0.5, optimizer="sgd", seed=9)
    for p, w, gi in zip(a.get_weights(), w0, g):
        np.testing.assert_allclose(p, w - 0.5 * gi, atol=1e-5)
    with pytest.raises(ValueError, match="optimizer"):
        a.train_local(x, y, steps=1, batch_size=16, learning_rate=0.1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="steps"):
        a.train_local(x, y, steps=0, batch_size=16, learning_rate=0.1)


def test_evaluate_matches_direct_prediction(digits: Dataset) -> None:
    a = _mlp(seed=3)
    x, y = digits.x_test, digits.y_test
    probs = np.asarray(a.model(x, training=False))
    want_acc = float(np.mean(np.argmax(probs, axis=1) == y))
    want_loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
    for bs in (512, 50):  # one batch, and uneven batches
        loss, acc = a.evaluate(x, y, batch_size=bs)
        assert acc == pytest.approx(want_acc)
        assert loss == pytest.approx(want_loss, rel=1e-4)
    with pytest.raises(ValueError, match="labels"):
        a.evaluate(x, y[:-1])


def test_batchnorm_stats_are_non_trainable_and_updated_locally() -> None:
    inp = keras.Input((4,), name="input")
    h = keras.layers.Dense(8, name="dense")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    a = KerasAdapter(keras.Model(inp, out, name="bnnet"))
    names = [s.name for s in a.specs()]
    mask = a.trainable_mask()
    assert [n for n, t in zip(names, mask) if not t] == ["bn/moving_mean", "bn/moving_variance"]
    assert [s.name for s in a.non_trainable_specs()] == ["bn/moving_mean", "bn/moving_variance"]
    before = a.non_trainable_weights()
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype(np.float32)
    grads, _ = a.compute_gradients(x, np.zeros(32, np.int64))
    assert [g.shape for g in grads] == [s.shape for s in a.trainable_specs()]
    after = a.non_trainable_weights()
    assert not np.array_equal(before[0], after[0])


def test_duplicate_weight_names_are_rejected() -> None:
    class Twin(keras.layers.Layer):
        def build(self, input_shape: tuple[int, ...]) -> None:
            self.a = self.add_weight(shape=(2,), name="w")
            self.b = self.add_weight(shape=(2,), name="w")

        def call(self, x: object) -> object:
            return x

    inp = keras.Input((2,))
    model = keras.Model(inp, Twin(name="twin")(inp))
    with pytest.raises(ValueError, match="not unique"):
        KerasAdapter(model)
