"""Server optimizers on the pseudo-gradient: FedAvgM (Hsu et al. 2019) and FedAdagrad, FedAdam,
FedYogi (Reddi et al. 2021, Algorithm 2), on small numbers against the papers' update rules."""

from __future__ import annotations

import numpy as np
import pytest

from tdxfl.engine.optimizers import SGD, AdaptiveServerOptimizer
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import FedAvg, FedOpt, LocalTraining

LOCAL = LocalTraining(steps=1, learning_rate=0.1)


def ts(*arrays: list[float]) -> TensorSet:
    return TensorSet.from_arrays([f"t{i}" for i in range(len(arrays))], [np.asarray(a, np.float32) for a in arrays])


def test_fedavgm_with_lr_1_and_no_momentum_is_fedavg() -> None:
    fedavgm, fedavg = ts([1.0, -2.0], [0.5]), ts([1.0, -2.0], [0.5])
    means = [[np.array([0.25, 3.0], np.float32), np.array([7.0], np.float32)] for _ in range(3)]
    opt = FedOpt(LOCAL, SGD(1.0, momentum=0.0), [True, False])
    for mean in means:
        opt.apply(fedavgm, mean)
        FedAvg(LOCAL).apply(fedavg, mean)
    for a, b in zip(fedavgm.arrays, fedavg.arrays):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_fedavgm_is_momentum_on_global_minus_mean() -> None:
    """Hsu et al.: v <- beta v + (x - mean); x <- x - eta v; non-trainable tensors take the mean."""
    eta, beta = 0.5, 0.9
    w = ts([1.0], [10.0])
    opt = FedOpt(LOCAL, SGD(eta, beta), [True, False])
    opt.apply(w, [np.array([0.0], np.float32), np.array([4.0], np.float32)])
    # g1 = 1 - 0 = 1, v1 = 1, x1 = 1 - 0.5 = 0.5
    np.testing.assert_allclose(w.arrays[0], [0.5])
    np.testing.assert_array_equal(w.arrays[1], [4.0])
    opt.apply(w, [np.array([0.3], np.float32), np.array([5.0], np.float32)])
    # g2 = 0.5 - 0.3 = 0.2, v2 = 0.9 * 1 + 0.2 = 1.1, x2 = 0.5 - 0.55 = -0.05
    np.testing.assert_allclose(w.arrays[0], [-0.05], atol=1e-7)
    np.testing.assert_array_equal(w.arrays[1], [5.0])


def paper_algorithm_2(
    rule: str, x: np.ndarray, means: list[np.ndarray], eta: float, b1: float, b2: float, tau: float
) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2 as written (Delta = mean - x), in float64."""
    x = x.astype(np.float64)
    m, v = np.zeros_like(x), np.full_like(x, tau**2)  # m_{-1} = 0, v_{-1} = tau^2
    for mean in means:
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        if rule == "adagrad":
            v = v + delta**2
        elif rule == "adam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("rule", ["adagrad", "adam", "yogi"])
def test_adaptive_server_optimizers_follow_algorithm_2(rule: str) -> None:
    x0 = np.array([1.0, -2.0, 0.5, 0.0], np.float32)
    rng = np.random.default_rng(0)
    means = [(x0 + rng.normal(0, s, 4)).astype(np.float32) for s in (0.5, 0.1, 2.0, 0.01, 0.3)]
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    w = ts(list(x0))
    strategy = FedOpt(LOCAL, AdaptiveServerOptimizer(rule, eta, b1, b2, tau), [True])
    for mean in means:  # the same sequence of client means into both
        strategy.apply(w, [mean])
    want = paper_algorithm_2(rule, x0, means, eta, b1, b2, tau)
    np.testing.assert_allclose(w.arrays[0], want, rtol=1e-5, atol=1e-6)


def test_fedadam_first_step_by_hand() -> None:
    """x = 1, mean = 0: Delta = -1, m = -0.1, v = 0.99 tau^2 + 0.01, x = 1 + eta m / (sqrt(v) + tau)."""
    w = ts([1.0])
    FedOpt(LOCAL, AdaptiveServerOptimizer("adam", 0.1, 0.9, 0.99, 1e-3), [True]).apply(w, [np.zeros(1, np.float32)])
    v = 0.99 * 1e-6 + 0.01
    np.testing.assert_allclose(w.arrays[0], [1 - 0.1 * 0.1 / (np.sqrt(v) + 1e-3)], rtol=1e-6)


@pytest.mark.parametrize("rule", ["adagrad", "adam", "yogi"])
def test_state_stays_finite_when_the_square_overflows_float32(rule: str) -> None:
    """A pseudo-gradient of 1e30 squares to 1e60, past float32's 3.4e38: squares are computed in
    float64 and the stored state is clipped to float32's range, so state and weights stay finite."""
    opt = AdaptiveServerOptimizer(rule, 0.01, 0.9, 0.99, 1e-3)
    w = [np.array([1e30, -1e30, 1.0], np.float32)]
    for _ in range(3):
        opt.apply(w, [w[0].copy()])  # pseudo-gradient = the weights: mean of clients = 0
    m, v = opt._m[0], opt._v[0]
    assert np.isfinite(m).all() and np.isfinite(v).all() and np.isfinite(w[0]).all()
    assert v[0] == np.finfo(np.float32).max and v.dtype == np.float32
    assert 0.9 < w[0][2] < 1.0  # the ordinary coordinate still steps towards the clients' mean


def test_adaptive_optimizer_refuses_unknown_rules_and_strided_weights() -> None:
    with pytest.raises(ValueError, match="unknown adaptive rule 'adamw'"):
        AdaptiveServerOptimizer("adamw", 0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        AdaptiveServerOptimizer("adam", 0.1).apply([np.zeros((4, 4), np.float32)[:, 0]], [np.zeros(4, np.float32)])
