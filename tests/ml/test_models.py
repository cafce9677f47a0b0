"""Model builders: determinism, stable names, sizes, and that small_cnn learns digits."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tdxfl.ml.data import load_digits
from tdxfl.ml.keras_adapter import KerasAdapter
from tdxfl.ml.models import MODEL_NAMES, build_model


def _weights(name: str, seed: int) -> list[np.ndarray]:
    return [np.asarray(w) for w in build_model(name, (8, 8, 1), 10, seed=seed).get_weights()]


def test_init_is_deterministic_and_seeded() -> None:
    a, b, c = _weights("small_cnn", 0), _weights("small_cnn", 0), _weights("small_cnn", 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c) if x.std() > 0)
    assert any(x.std() > 0 for x in a)


def test_build_does_not_disturb_global_random_state() -> None:
    np.random.seed(123)
    random.seed(123)
    build_model("mlp", (8, 8, 1), 10, seed=5)
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())


def test_weight_names_are_stable_across_builds() -> None:
    first = [v.path for v in build_model("small_cnn", (8, 8, 1), 10).weights]
    second = [v.path for v in build_model("small_cnn", (8, 8, 1), 10).weights]
    assert first == second
    assert first[0] == "small_cnn/conv1/kernel" and first[-1] == "small_cnn/output/bias"
    mlp = build_model("mlp", (8, 8, 1), 3)
    assert [v.path for v in mlp.weights] == [
        "mlp/hidden/kernel",
        "mlp/hidden/bias",
        "mlp/output/kernel",
        "mlp/output/bias",
    ]
    assert mlp.output_shape == (None, 3)


def test_bad_args() -> None:
    assert set(MODEL_NAMES) == {"small_cnn", "resnet50", "mlp"}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", (8, 8, 1), 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (8, 8, 1), 1)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", (0, 8), 10)


def test_small_cnn_centralized_training_reaches_95_percent() -> None:
    d = load_digits(seed=0)
    model = build_model("small_cnn", d.input_shape, d.num_classes, seed=0)
    assert 100_000 < model.count_params() < 300_000
    adapter = KerasAdapter(model)
    out = adapter.train_local(
        d.x_train, d.y_train, steps=450, batch_size=32, learning_rate=2e-3, optimizer="adam", seed=0
    )
    assert out["num_samples"] == len(d.x_train) and out["steps"] == 450
    loss, acc = adapter.evaluate(d.x_test, d.y_test)
    assert acc >= 0.95, (loss, acc)


def test_resnet50_size_and_layout() -> None:
    model = build_model("resnet50", (32, 32, 3), 10, seed=0)
    n = model.count_params()
    assert 23_500_000 <= n <= 23_700_000, n
    assert model.output_shape == (None, 10)
    adapter = KerasAdapter(model)
    specs = adapter.specs()
    assert len({s.name for s in specs}) == len(specs) == len(model.weights)
    assert adapter.num_params() == n
    mask = adapter.trainable_mask()
    frozen = [s.name for s, t in zip(specs, mask) if not t]
    assert frozen and all(s.endswith(("moving_mean", "moving_variance")) for s in frozen)
    assert len(adapter.non_trainable_weights()) == len(frozen)
    assert sum(s.size for s in adapter.trainable_specs()) == sum(int(np.prod(v.shape)) for v in model.trainable_weights)
