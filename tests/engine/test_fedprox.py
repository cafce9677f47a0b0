"""FedProx (Li et al. 2020): the proximal term ``mu / 2 * ||w - w_global||^2`` in every adapter's
``train_local``, ``w_global`` being the trainable weights at the start of the call.

The term's gradient is checked against finite differences of the whole FedProx objective on the
numpy model; every adapter (numpy, PyTorch, Keras) against the rule
``w <- w - lr * (grad + mu * (w - w_global))``; and with ``mu = 0`` training is FedAvg's exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedtools import SoftmaxRegression, blobs
from tdxfl.engine.data import LocalData, batches
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.strategy import FedAvg, LocalTraining

LR, MU, BATCH, SEED = 0.5, 2.0, 8, 4


def softmax() -> ModelAdapter:
    return SoftmaxRegression(4, 3, seed=1)


def torch_mlp() -> ModelAdapter:
    from tdxfl.ml.torch_adapter import TorchAdapter
    from tdxfl.ml.torch_models import build_torch_model

    return TorchAdapter(build_torch_model("mlp", (4,), 3, seed=1))


def keras_mlp() -> ModelAdapter:
    from tdxfl.ml.keras_adapter import KerasAdapter
    from tdxfl.ml.models import build_model

    return KerasAdapter(build_model("mlp", (4,), 3, seed=1))


ADAPTERS = pytest.mark.parametrize("make", [softmax, torch_mlp, keras_mlp], ids=["numpy", "torch", "keras"])
X, Y = blobs(40, dim=4, classes=3, seed=3)


def trainable(model: ModelAdapter, weights: list[np.ndarray]) -> list[np.ndarray]:
    return [w for w, t in zip(weights, model.trainable_mask()) if t]


@ADAPTERS
def test_local_steps_follow_the_proximal_rule(make: Callable[[], ModelAdapter]) -> None:
    model, replica = make(), make()
    start = replica.get_weights()
    model.train_local(X, Y, 3, BATCH, LR, "sgd", seed=SEED, proximal_mu=MU)
    anchor = trainable(replica, start)
    w = [a.astype(np.float64) for a in anchor]
    for _, (xb, yb) in zip(range(3), batches(X, Y, BATCH, seed=SEED)):
        it = iter(w)
        replica.set_weights([next(it).astype(np.float32) if t else a for a, t in zip(start, replica.trainable_mask())])
        grads, _ = replica.compute_gradients(xb, yb)
        w = [a - LR * (g + MU * (a - a0)) for a, g, a0 in zip(w, grads, anchor)]
    for got, want in zip(trainable(model, model.get_weights()), w):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # the term pulled the weights towards the start: nearer than plain local training gets
    plain = make()
    plain.train_local(X, Y, 3, BATCH, LR, "sgd", seed=SEED)
    dist = [
        sum(float(np.square(a - a0).sum()) for a, a0 in zip(trainable(m, m.get_weights()), anchor))
        for m in (model, plain)
    ]
    assert dist[0] < dist[1]


@ADAPTERS
def test_mu_zero_is_plain_local_training(make: Callable[[], ModelAdapter]) -> None:
    a, b = make(), make()
    out_a = a.train_local(X, Y, 4, BATCH, LR, "sgd", seed=SEED, proximal_mu=0.0)
    out_b = b.train_local(X, Y, 4, BATCH, LR, "sgd", seed=SEED)
    assert out_a["loss"] == out_b["loss"]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_the_proximal_gradient_matches_finite_differences_of_the_objective() -> None:
    """Two local steps: the second one's step, ``(w1 - w2) / lr``, is the gradient of
    ``loss(batch 2) + mu/2 ||w - w0||^2`` at ``w1`` -- checked by central differences."""
    model = SoftmaxRegression(4, 3, seed=1)
    w0, b0 = model.w.astype(np.float64), model.b.astype(np.float64)
    model.train_local(X, Y, 1, BATCH, LR, seed=SEED, proximal_mu=MU)
    w1, b1 = model.w.astype(np.float64), model.b.astype(np.float64)
    model.set_weights([w0.astype(np.float32), b0.astype(np.float32), np.zeros(4, np.float32)])
    model.train_local(X, Y, 2, BATCH, LR, seed=SEED, proximal_mu=MU)
    step_w = (w1 - model.w) / LR
    _, (xb, yb) = list(zip(range(2), batches(X, Y, BATCH, seed=SEED)))[1]

    def objective(w: np.ndarray) -> float:
        z = xb.astype(np.float64) @ w + b1
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(yb)), yb].mean() + MU / 2 * np.square(w - w0).sum())

    numeric = np.zeros_like(w1)
    eps = 1e-6
    for idx in np.ndindex(*w1.shape):
        e = np.zeros_like(w1)
        e[idx] = eps
        numeric[idx] = (objective(w1 + e) - objective(w1 - e)) / (2 * eps)
    assert float(np.abs(w1 - w0).max()) > 0.01  # the term is not zero at w1
    np.testing.assert_allclose(step_w, numeric, rtol=1e-3, atol=1e-5)


def test_fedavg_passes_mu_to_local_training() -> None:
    data = LocalData(X, Y, batch_size=BATCH)
    prox, plain = SoftmaxRegression(4, 3, seed=1), SoftmaxRegression(4, 3, seed=1)
    up = FedAvg(LocalTraining(steps=5, learning_rate=LR, seed=SEED, proximal_mu=MU)).make_update(prox, data, 0)
    reference = SoftmaxRegression(4, 3, seed=1)
    reference.train_local(X, Y, 5, BATCH, LR, seed=SEED, proximal_mu=MU)
    np.testing.assert_array_equal(up.tensors.arrays[0], reference.w)
    plain_up = FedAvg(LocalTraining(steps=5, learning_rate=LR, seed=SEED)).make_update(plain, data, 0)
    assert not np.array_equal(up.tensors.arrays[0], plain_up.tensors.arrays[0])
