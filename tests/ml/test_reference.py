"""numpy reference forward passes: the same function as the Keras models, no TensorFlow needed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tdxfl.ml.data import Dataset, load_digits
from tdxfl.ml.keras_adapter import KerasAdapter
from tdxfl.ml.models import MODEL_NAMES, build_model
from tdxfl.ml.reference import REFERENCE_MODELS, accuracy, has_reference, predict


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def _random_adapter(model: str, seed: int) -> tuple[KerasAdapter, dict[str, np.ndarray]]:
    a = KerasAdapter(build_model(model, (8, 8, 1), 10, seed=seed))
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0.0, 0.3, s.shape).astype(np.float32) for s in a.specs()]
    a.set_weights(weights)
    return a, {s.name: w for s, w in zip(a.specs(), weights)}


@pytest.mark.parametrize("model", REFERENCE_MODELS)
def test_matches_keras(model: str, digits: Dataset) -> None:
    a, weights = _random_adapter(model, seed=3)
    x = digits.x_test
    want = np.asarray(a.model(x, training=False))
    got = predict(model, weights, x)
    assert got.shape == want.shape == (len(x), 10)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
    assert accuracy(model, weights, x, digits.y_test) == a.evaluate(x, digits.y_test)[1]


def test_trained_small_cnn_accuracy_matches(digits: Dataset) -> None:
    a = KerasAdapter(build_model("small_cnn", (8, 8, 1), 10, seed=0))
    a.train_local(digits.x_train, digits.y_train, steps=60, batch_size=64, learning_rate=0.002, optimizer="adam")
    weights = {s.name: w for s, w in zip(a.specs(), a.get_weights())}
    keras_acc = a.evaluate(digits.x_test, digits.y_test)[1]
    assert keras_acc > 0.8
    assert accuracy("small_cnn", weights, digits.x_test, digits.y_test) == keras_acc


def test_refuses_unknown_models_and_bad_weights(digits: Dataset) -> None:
    assert set(REFERENCE_MODELS) <= set(MODEL_NAMES)
    assert not has_reference("resnet50") and has_reference("small_cnn")
    _, weights = _random_adapter("mlp", seed=0)
    with pytest.raises(ValueError, match="no numpy reference"):
        predict("resnet50", weights, digits.x_test)
    with pytest.raises(ValueError, match="missing"):
        predict("mlp", {k: v for k, v in weights.items() if not k.endswith("output/bias")}, digits.x_test)
    with pytest.raises(ValueError, match="do not fit"):
        predict("mlp", weights, np.zeros((4, 6, 6, 1), np.float32))  # 36 inputs, kernel wants 64
    with pytest.raises(ValueError, match="labels"):
        accuracy("mlp", weights, digits.x_test, digits.y_test[:-1])


def test_needs_no_tensorflow() -> None:
    code = (
        "import sys, numpy as np\n"
        "from tdxfl.ml.reference import predict\n"
        "w = {'mlp/hidden/kernel': np.ones((64, 16)), 'mlp/hidden/bias': np.zeros(16),\n"
        "     'mlp/output/kernel': np.ones((16, 10)), 'mlp/output/bias': np.arange(10.0)}\n"
        "assert predict('mlp', w, np.zeros((2, 8, 8, 1))).argmax(-1).tolist() == [9, 9]\n"
        "assert not {'tensorflow', 'keras', 'torch'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
