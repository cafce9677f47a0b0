"""Server-side optimizers and aggregation strategies (numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtools import SoftmaxRegression, blobs
from tdxfl.engine.data import LocalData, batches
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.optimizers import SGD, Adam, make_optimizer
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import FedAvg, LocalTraining, RoundAccumulator, SyncGradients
from tdxfl.errors import RecordError


def test_adam_matches_keras() -> None:
    import keras

    w0 = np.array([1.0, -2.0, 3.0], np.float32)
    grads = [np.array([0.5, -1.0, 2.0], np.float32), np.array([0.1, 0.3, -0.2], np.float32)]
    var = keras.Variable(w0.copy())
    opt = keras.optimizers.Adam(learning_rate=0.01)
    mine = [w0.copy()]
    ours = Adam(0.01)
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        ours.apply(mine, [g])
    np.testing.assert_allclose(mine[0], np.asarray(var.numpy()), rtol=1e-5)


def test_sgd_momentum() -> None:
    w = [np.zeros(2, np.float32)]
    opt = SGD(0.1, momentum=0.9)
    opt.apply(w, [np.ones(2, np.float32)])
    opt.apply(w, [np.ones(2, np.float32)])
    np.testing.assert_allclose(w[0], [-0.1 - 0.19, -0.1 - 0.19], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("lbfgs", 0.1)


def ts(*arrays: np.ndarray) -> TensorSet:
    return TensorSet.from_arrays([f"t{i}" for i in range(len(arrays))], list(arrays))


def test_accumulator_weighted_mean_and_validation() -> None:
    base = ts(np.zeros(3, np.float32), np.zeros((2, 2), np.float32))
    acc = RoundAccumulator(base.specs)
    acc.add(ts(np.ones(3, np.float32), np.ones((2, 2), np.float32)), 1.0)
    acc.add(ts(np.full(3, 4, np.float32), np.full((2, 2), 4, np.float32)), 3.0)
    mean = acc.mean()
    np.testing.assert_allclose(mean[0], 3.25)
    with pytest.raises(RecordError, match="NaN"):
        acc.add(ts(np.array([1, np.nan, 1], np.float32), np.ones((2, 2), np.float32)), 1.0)
    with pytest.raises(RecordError, match="shape"):
        acc.add(ts(np.ones(4, np.float32), np.ones((2, 2), np.float32)), 1.0)
    with pytest.raises(RecordError, match="expected 2 tensors"):
        acc.add(ts(np.ones(3, np.float32)), 1.0)
    assert acc.count == 2  # refused updates left the sum untouched
    np.testing.assert_allclose(acc.mean()[0], 3.25)


def test_sync_gradients_applies_optimizer_and_averages_state() -> None:
    weights = ts(np.ones(2, np.float32), np.zeros(2, np.float32))
    SyncGradients(SGD(0.5), [True, False]).apply(weights, [np.ones(2, np.float32), np.full(2, 7, np.float32)])
    np.testing.assert_allclose(weights.arrays[0], 0.5)
    np.testing.assert_allclose(weights.arrays[1], 7)


def test_fedavg_replaces_weights() -> None:
    weights = ts(np.ones(2, np.float32))
    FedAvg(LocalTraining(steps=1, learning_rate=0.1)).apply(weights, [np.full(2, 3, np.float32)])
    np.testing.assert_allclose(weights.arrays[0], 3)


def test_sync_gradients_packs_gradients_and_state_and_weights_equally() -> None:
    """A sync-gradients update is, in the model's tensor order, the gradient of each trainable
    tensor and the current value of each non-trainable one; every update weighs 1."""
    x, y = blobs(64)
    model = SoftmaxRegression(4, 3)
    strategy = SyncGradients(SGD(0.1), model.trainable_mask())
    data = LocalData(x, y, batch_size=16, seed=1)
    up = strategy.make_update(model, data, version=7)
    xb, yb = next(batches(x, y, 16, seed=1))
    reference = SoftmaxRegression(4, 3)
    (gw, gb), loss = reference.compute_gradients(xb, yb)
    assert [s.name for s in up.tensors.specs] == ["w", "b", "x_mean"]
    np.testing.assert_allclose(up.tensors.arrays[0], gw, rtol=1e-6)
    np.testing.assert_allclose(up.tensors.arrays[1], gb, rtol=1e-6)
    np.testing.assert_allclose(up.tensors.arrays[2], reference.x_mean)  # the state after the step
    assert (up.info.kind, up.info.version, up.info.num_samples) == (UpdateKind.GRADIENTS, 7, 16)
    assert up.info.metrics["loss"] == pytest.approx(loss)
    assert strategy.update_weight(up.info) == 1.0


def test_fedavg_sends_trained_weights_weighted_by_samples() -> None:
    x, y = blobs(50)
    model = SoftmaxRegression(4, 3)
    strategy = FedAvg(LocalTraining(steps=5, learning_rate=0.5, seed=3))
    before = model.get_weights()
    up = strategy.make_update(model, LocalData(x, y, batch_size=10), version=2)
    reference = SoftmaxRegression(4, 3)
    reference.train_local(x, y, 5, 10, 0.5, seed=3 + 2)  # round "version" is seeded with seed + version
    for got, want in zip(up.tensors.arrays, reference.get_weights()):
        np.testing.assert_allclose(got, want)
    assert not np.allclose(up.tensors.arrays[0], before[0])
    assert (up.info.kind, up.info.num_samples) == (UpdateKind.WEIGHTS, 50)
    assert strategy.update_weight(up.info) == 50.0


def test_accumulator_is_exact_across_blocks_and_reusable() -> None:
    """Tensors larger than the add's block size, weights other than 1, float64 sums, and a reset
    between rounds all give numpy's weighted mean."""
    rng = np.random.default_rng(3)
    u1 = ts(rng.standard_normal(200_001).astype(np.float32), rng.standard_normal((3, 70_000)))
    u2 = ts(rng.standard_normal(200_001).astype(np.float32), rng.standard_normal((3, 70_000)))
    acc = RoundAccumulator(u1.specs)
    for _ in range(2):  # the second round reuses the buffers
        acc.add(u1, 3.0)
        acc.add(u2, 1.0)
        for i, m in enumerate(acc.mean()):
            want = (3.0 * u1.arrays[i].astype(np.float64) + u2.arrays[i]) / 4.0
            np.testing.assert_allclose(m, want, rtol=1e-5, atol=1e-6)
            assert m.dtype == u1.arrays[i].dtype
        acc.reset()
    acc.add(u2, 2.0)  # a reset sum holds nothing of the earlier rounds
    np.testing.assert_allclose(acc.mean()[1], u2.arrays[1])
