"""The PyTorch adapter implements the same contract as the Keras one."""

from __future__ import annotations

import numpy as np

from tdxfl.engine.data import batches
from tdxfl.engine.optimizers import Adam
from tdxfl.ml.data import load_digits
from tdxfl.ml.torch_adapter import TorchAdapter
from tdxfl.ml.torch_models import build_torch_model


def test_specs_roundtrip_and_determinism() -> None:
    a = TorchAdapter(build_torch_model("small_cnn", (8, 8, 1), 10, seed=3))
    b = TorchAdapter(build_torch_model("small_cnn", (8, 8, 1), 10, seed=3))
    assert a.specs() == b.specs() and all(s.dtype == "float32" for s in a.specs())
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    w = [np.full_like(x, 0.5) for x in a.get_weights()]
    a.set_weights(w)
    assert all((x == 0.5).all() for x in a.get_weights())


def test_server_side_optimizer_on_worker_gradients_learns_digits() -> None:
    data = load_digits(seed=0)
    adapter = TorchAdapter(build_torch_model("small_cnn", data.input_shape, data.num_classes))
    weights = adapter.get_weights()
    opt = Adam(0.003)
    for _, (xb, yb) in zip(range(150), batches(data.x_train, data.y_train, 32, seed=0)):
        adapter.set_weights(weights)
        grads, loss = adapter.compute_gradients(xb, yb)
        opt.apply(weights, grads)
    adapter.set_weights(weights)
    loss, acc = adapter.evaluate(data.x_test, data.y_test)
    assert acc >= 0.9, acc


def test_train_local_changes_weights_and_reports_samples() -> None:
    data = load_digits(seed=0)
    adapter = TorchAdapter(build_torch_model("mlp", data.input_shape, data.num_classes))
    before = adapter.get_weights()
    out = adapter.train_local(data.x_train, data.y_train, steps=20, batch_size=32, learning_rate=0.05, optimizer="sgd")
    assert out["num_samples"] == len(data.x_train) and out["loss"] > 0
    assert any(not np.array_equal(x, y) for x, y in zip(before, adapter.get_weights()))
