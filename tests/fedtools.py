"""Test helpers shared across folders (importable because tests/ is on sys.path)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdxfl.attestation.insecure_simulated import code_measurement
from tdxfl.engine.data import batches
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSpec


def free_port() -> int:
    """A loopback port that is free now: only for parties in *other processes*, whose addresses
    must be written into their files before they start. In-process servers bind port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def federation_doc(workdir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A federation document (1 PS, 2 workers, simulated TDs, tiny MLP on digits); the PS binds
    port 0 (in-process tests read the bound ports back from the running PS)."""
    mrtd = code_measurement().hex()
    doc: dict[str, Any] = {
        "federation": {"name": "test-fed"},
        "party": [
            {"name": "ps", "role": "ps", "address": "127.0.0.1:0"},
            {"name": "worker-1", "role": "worker"},
            {"name": "worker-2", "role": "worker"},
        ],
        "training": {
            "model": "mlp",
            "dataset": "digits",
            "rounds": 3,
            "steps_per_round": 10,
            "batch_size": 32,
            "optimizer": "adam",
            "learning_rate": 0.01,
        },
        "faults": {"step_timeout_s": 5.0, "join_timeout_s": 60.0, "connect_retries": 5, "connect_backoff_s": 0.2},
        "attestation": {"mode": "simulated"},
        "policy": {
            "workers": {"tee": ["simulated"], "mrtd": [mrtd]},
            "ps": {"tee": ["simulated"], "mrtd": [mrtd]},
        },
        "output": {"dir": str(workdir)},
    }
    for name, table in sections.items():
        doc[name] = {**doc.get(name, {}), **table}
    return doc


class SoftmaxRegression(ModelAdapter):
    """A numpy multinomial logistic regression: a real model for engine tests, no framework.

    Trainable ``w`` and ``b``; one non-trainable tensor, ``x_mean``, a moving average of the
    inputs seen in training (like batch-norm statistics), so update packing is exercised.
    """

    def __init__(self, dim: int, classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(0, 0.01, (dim, classes)).astype(np.float32)
        self.b = np.zeros(classes, np.float32)
        self.x_mean = np.zeros(dim, np.float32)

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec.of("w", self.w), TensorSpec.of("b", self.b), TensorSpec.of("x_mean", self.x_mean)]

    def get_weights(self) -> list[np.ndarray]:
        return [self.w.copy(), self.b.copy(), self.x_mean.copy()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        w, b, m = weights
        self.w[...], self.b[...], self.x_mean[...] = w, b, m

    def trainable_mask(self) -> list[bool]:
        return [True, True, False]

    def non_trainable_weights(self) -> list[np.ndarray]:
        return [self.x_mean.copy()]

    def _probs(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.w + self.b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def compute_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], float]:
        p = self._probs(x)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        p[np.arange(len(y)), y] -= 1.0
        p /= len(y)
        self.x_mean[...] = 0.9 * self.x_mean + 0.1 * x.mean(axis=0)
        return [(x.T @ p).astype(np.float32), p.sum(axis=0).astype(np.float32)], loss

    def train_local(
        self,
        x: np.ndarray,
        y: np.ndarray,
        steps: int,
        batch_size: int,
        learning_rate: float,
        optimizer: str = "sgd",
        seed: int = 0,
        *,
        proximal_mu: float = 0.0,
    ) -> dict[str, float]:
        draw = batches(x, y, batch_size, seed=seed)
        w0, b0 = self.w.copy(), self.b.copy()  # FedProx's anchor: the global model
        losses = []
        for _ in range(steps):
            (gw, gb), loss = self.compute_gradients(*next(draw))
            self.w -= learning_rate * (gw + proximal_mu * (self.w - w0))
            self.b -= learning_rate * (gb + proximal_mu * (self.b - b0))
            losses.append(loss)
        return {"loss": float(np.mean(losses)), "num_samples": len(x), "steps": steps}

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
        p = self._probs(x)
        return float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean()), float((p.argmax(axis=1) == y).mean())


def blobs(n: int, dim: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of ``classes`` well-separated Gaussian blobs in ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0, 3, (classes, dim))
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(0, 1, (n, dim))).astype(np.float32), y.astype(np.int64)


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; whether it held. For
    conditions another process or thread brings about that give no event to wait on."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
    return True


def federate_in_memory(
    server_model: SoftmaxRegression,
    strategy: Any,
    plan: Any,
    workers: Sequence[tuple[str, ModelAdapter, Any, Any]],
    test_data: tuple[np.ndarray, np.ndarray],
) -> tuple[Any, list[Any], list[Any]]:
    """``tdxfl.engine.memory.simulate`` with workers as (name, model, strategy, LocalData): the
    PS's TrainingResult, its RoundMetrics and the workers' results, in ``workers`` order."""
    from tdxfl.engine.memory import SimulatedWorker, simulate

    run = simulate(server_model, strategy, plan, [SimulatedWorker(*w) for w in workers], test_data)
    return run.result, run.rounds, [run.workers[w[0]] for w in workers]
