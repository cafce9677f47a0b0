"""Every strategy end to end on the in-memory fleet: built from a federation file's ``[strategy]``
by the wiring's ``make_strategy`` (as the PS and the workers build it), the real PS and worker
loops in threads, SoftmaxRegression on blobs. The robust strategies train with a Byzantine worker
among five that the plain mean does not survive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedtools import SoftmaxRegression, blobs, federate_in_memory, federation_doc
from tdxfl.config import Federation, parse_federation
from tdxfl.engine.data import LocalData
from tdxfl.engine.server import RoundMetrics, TrainingResult
from tdxfl.wiring.ps import make_strategy, round_plan


class Byzantine(SoftmaxRegression):
    """A worker that trains, then sends random values of the order of 1e6 in every tensor
    (weights or gradients)."""

    _rng = np.random.default_rng(666)

    def _garbage(self, like: np.ndarray) -> np.ndarray:
        return (1e6 * self._rng.standard_normal(like.shape)).astype(like.dtype)

    def get_weights(self) -> list[np.ndarray]:
        return [self._garbage(a) for a in super().get_weights()]

    def compute_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        grads, loss = super().compute_gradients(x, y)
        return [self._garbage(g) for g in grads], loss


def federation(tmp_path: Path, workers: int, mode: str, rounds: int, **sections: dict[str, Any]) -> Federation:
    training = {"mode": mode, "rounds": rounds, "steps_per_round": 10, "optimizer": "sgd", "learning_rate": 0.5}
    doc = federation_doc(tmp_path, training=training, **sections)
    doc["party"] = [doc["party"][0]] + [{"name": f"w{i}", "role": "worker"} for i in range(workers)]
    return parse_federation(doc)


def federate(fed: Federation, byzantine: int = 0) -> tuple[TrainingResult, list[RoundMetrics]]:
    """The PS and ``fed``'s workers (the last ``byzantine`` of them Byzantine), in threads."""
    names = [w.name for w in fed.workers]
    x, y = blobs(200 * len(names), seed=1)
    server_model = SoftmaxRegression(4, 3)
    workers = []
    for i, name in enumerate(names):
        model = Byzantine(4, 3) if i >= len(names) - byzantine else SoftmaxRegression(4, 3)
        data = LocalData(x[i :: len(names)], y[i :: len(names)], batch_size=32, seed=i)
        workers.append((name, model, make_strategy(fed, model.trainable_mask()), data))
    strategy = make_strategy(fed, server_model.trainable_mask())
    result, seen, _ = federate_in_memory(server_model, strategy, round_plan(fed), workers, blobs(300, seed=2))
    return result, seen


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "fedavgm", "server_learning_rate": 1.0, "server_momentum": 0.5},
        {"name": "fedadam", "server_learning_rate": 0.1},
        {"name": "fedyogi", "server_learning_rate": 0.1},
        {"name": "fedadagrad", "server_learning_rate": 0.1},
        {"name": "fedprox", "proximal_mu": 0.1},
    ],
    ids=lambda s: s["name"],
)
def test_fedavg_family_trains(tmp_path: Path, strategy: dict[str, Any]) -> None:
    result, rounds = federate(federation(tmp_path, 2, "fedavg", 6, strategy=strategy))
    assert result.accuracy >= 0.9 and result.version == 6
    assert rounds[-1].loss < rounds[0].loss
    assert all(m.epsilon is None for m in rounds)


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "median"},
        {"name": "trimmed-mean", "trim_fraction": 0.2},
        {"name": "krum", "byzantine": 1},
        {"name": "multi-krum", "byzantine": 1, "krum_select": 3},
    ],
    ids=lambda s: s["name"],
)
@pytest.mark.parametrize("mode", ["fedavg", "sync-gradients"])
def test_robust_strategies_train_despite_a_byzantine_worker(
    tmp_path: Path, strategy: dict[str, Any], mode: str
) -> None:
    result, rounds = federate(federation(tmp_path, 5, mode, 4, strategy=strategy), byzantine=1)
    assert result.accuracy >= 0.9
    assert all(m.contributors == 5 * (10 if mode == "sync-gradients" else 1) for m in rounds)


def test_the_plain_mean_does_not_survive_the_byzantine_worker(tmp_path: Path) -> None:
    result, _ = federate(federation(tmp_path, 5, "fedavg", 2), byzantine=1)
    assert result.accuracy < 0.6
