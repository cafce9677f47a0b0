"""Compressed updates with error feedback keep the accuracy of fp32 updates on the in-memory
fleet (sync-gradients and FedAvg); without error feedback, top-k at 1% falls behind."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedtools import SoftmaxRegression, blobs
from tdxfl.engine.compression import Codec, Compressor
from tdxfl.engine.data import LocalData
from tdxfl.engine.kinds import OnTimeout
from tdxfl.engine.memory import SimulatedWorker, simulate
from tdxfl.engine.optimizers import SGD
from tdxfl.engine.server import RoundPlan
from tdxfl.engine.strategy import FedAvg, LocalTraining, Strategy, SyncGradients

WORKERS = ["w1", "w2"]
DIM, CLASSES, NOISE = 40, 10, 6.0


def noisy_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = blobs(n, DIM, CLASSES, seed=seed)
    return (x + np.random.default_rng(seed + 10).normal(0, NOISE, x.shape)).astype(np.float32), y


def accuracy(
    strategy_for: Callable[[SoftmaxRegression], Strategy],
    rounds: int,
    codec: Codec | None,
    *,
    topk_fraction: float = 0.01,
    error_feedback: bool = True,
) -> float:
    x, y = noisy_blobs(2000, 1)
    x_test, y_test = noisy_blobs(1000, 2)
    server_model = SoftmaxRegression(DIM, CLASSES)
    strategy = strategy_for(server_model)
    workers = []
    for i, name in enumerate(WORKERS):
        model = SoftmaxRegression(DIM, CLASSES)
        comp = None if codec is None else Compressor(codec, topk_fraction=topk_fraction, error_feedback=error_feedback)
        workers.append(SimulatedWorker(name, model, strategy_for(model), LocalData(x[i::2], y[i::2], 32, i), comp))
    plan = RoundPlan(rounds=rounds, quorum=2, step_timeout_s=30.0, on_timeout=OnTimeout.CONTINUE, join_timeout_s=60.0)
    result = simulate(server_model, strategy, plan, workers, (x_test, y_test)).result
    return float(result.accuracy)


def sync(m: SoftmaxRegression) -> Strategy:
    return SyncGradients(SGD(0.5), m.trainable_mask(), steps_per_round=10)


def fedavg(m: SoftmaxRegression) -> Strategy:
    return FedAvg(LocalTraining(steps=10, learning_rate=0.5))


@pytest.mark.parametrize(("strategy_for", "rounds"), [(sync, 3), (fedavg, 10)], ids=["sync-gradients", "fedavg"])
def test_compression_with_error_feedback_keeps_fp32_accuracy(
    strategy_for: Callable[[SoftmaxRegression], Strategy], rounds: int
) -> None:
    fp32 = accuracy(strategy_for, rounds, None)
    assert fp32 > 0.75
    for codec, fraction in [(Codec.INT8, 0.01), (Codec.INT4, 0.01), (Codec.TOPK, 0.1)]:
        got = accuracy(strategy_for, rounds, codec, topk_fraction=fraction)
        assert got >= fp32 - 0.03, (codec, got, fp32)


def test_top_k_at_one_percent_without_error_feedback_falls_behind() -> None:
    fp32 = accuracy(sync, 3, None)
    with_ef = accuracy(sync, 3, Codec.TOPK, topk_fraction=0.01)
    without = accuracy(sync, 3, Codec.TOPK, topk_fraction=0.01, error_feedback=False)
    assert without < fp32 - 0.08 and without < with_ef - 0.03, (without, with_ef, fp32)
