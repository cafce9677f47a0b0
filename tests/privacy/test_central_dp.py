"""Central DP in the aggregator: clipping of each update's change, the noise's standard deviation
(with an injected generator), the accounting of every release, and training under it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from fedtools import SoftmaxRegression, blobs, federate_in_memory, federation_doc
from tdxfl.config import parse_federation
from tdxfl.engine.aggregators import CoordinateMedian, RobustAggregation
from tdxfl.engine.central_dp import CentralDP, DpAggregator
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import UpdateInfo
from tdxfl.engine.kinds import UpdateKind
from tdxfl.engine.optimizers import SGD
from tdxfl.engine.records import TensorSet
from tdxfl.engine.server import RoundMetrics
from tdxfl.engine.strategy import FedAvg, LocalTraining, SyncGradients
from tdxfl.errors import ConfigError, RecordError
from tdxfl.privacy.accounting import GaussianAccountant
from tdxfl.server.metrics import MetricsRecorder
from tdxfl.wiring.ps import make_strategy, round_plan


class Counting:
    """A PrivacyAccountant that counts releases."""

    def __init__(self) -> None:
        self.releases = 0

    def spend(self) -> None:
        self.releases += 1

    def epsilon(self) -> float:
        return float(self.releases)


def ts(*arrays: object) -> TensorSet:
    return TensorSet.from_arrays([f"t{i}" for i in range(len(arrays))], [np.asarray(a) for a in arrays])


def dp(reference: list[np.ndarray | None], clip: float, z: float, seed: int = 0) -> tuple[DpAggregator, Counting]:
    specs = ts(*[np.zeros_like(r) if r is not None else np.zeros(2, np.float32) for r in reference]).specs
    accountant = Counting()
    agg = DpAggregator(specs, clip, z, lambda: reference, accountant, np.random.default_rng(seed))
    return agg, accountant


def test_each_update_is_clipped_to_the_norm_over_all_its_tensors() -> None:
    """Changes relative to the global model: (3, 0 | 4) has norm 5 and is scaled to norm 1;
    (0.3, 0 | 0.4) has norm 0.5 < 1 and stays; the mean of the clipped changes is released."""
    ref = [np.array([1.0, 1.0], np.float32), np.array([2.0], np.float32)]
    agg, accountant = dp(list(ref), clip=1.0, z=1e-9)
    agg.add(ts(np.array([4.0, 1.0], np.float32), np.array([6.0], np.float32)), 50.0)  # weights are ignored
    agg.add(ts(np.array([1.3, 1.0], np.float32), np.array([2.4], np.float32)), 1.0)
    mean = agg.mean()
    np.testing.assert_allclose(mean[0], [1 + (0.6 + 0.3) / 2, 1.0], atol=1e-6)
    np.testing.assert_allclose(mean[1], [2 + (0.8 + 0.4) / 2], atol=1e-6)
    assert accountant.releases == 1
    agg.reset()  # a new step: the sum starts again
    agg.add(ts(np.array([1.0, 1.0], np.float32), np.array([2.0], np.float32)), 1.0)  # no change at all
    np.testing.assert_allclose(agg.mean()[0], [1.0, 1.0], atol=1e-6)
    assert accountant.releases == 2


def test_gradients_are_clipped_as_they_are_and_state_relative_to_the_global_state() -> None:
    """sync-gradients: the gradient (reference None) is its own change; the non-trainable
    state's change is relative to the global state; integer tensors are not released."""
    strategy = SyncGradients(SGD(0.1), [True, False, False])
    global_weights = ts(np.array([5.0, 5.0], np.float32), np.array([1.0], np.float32), np.array([7], np.int64))
    reference = strategy.update_reference(global_weights)
    assert reference[0] is None and reference[1] is global_weights.arrays[1]
    agg, _ = dp(reference, clip=1.0, z=1e-9)
    agg.add(ts(np.array([0.0, 6.0], np.float32), np.array([9.0], np.float32), np.array([1000], np.int64)), 1.0)
    mean = agg.mean()
    # change (0, 6 | 8): norm 10, the integer tensor not counted; scaled by 1/10
    np.testing.assert_allclose(mean[0], [0.0, 0.6], atol=1e-6)
    np.testing.assert_allclose(mean[1], [1.8], atol=1e-6)
    np.testing.assert_array_equal(mean[2], [7])  # the global value, whatever the worker sent


def test_noise_std_is_noise_multiplier_times_clip_over_n() -> None:
    n, clip, z = 4, 2.0, 1.5
    ref = [np.zeros(200_000, np.float32), np.full((3, 10_000), 3.0, np.float32)]
    agg, _ = dp(ref, clip, z, seed=7)
    for _ in range(n):
        agg.add(ts(*ref), 1.0)  # no change: the released mean is the reference plus noise
    mean = [a.copy() for a in agg.mean()]
    noise = np.concatenate([mean[0], (mean[1] - 3.0).ravel()])
    assert noise.std() == pytest.approx(z * clip / n, rel=0.01) and abs(noise.mean()) < 0.005
    again, _ = dp(ref, clip, z, seed=7)  # the same injected generator: the same noise
    for _ in range(n):
        again.add(ts(*ref), 1.0)
    np.testing.assert_array_equal(again.mean()[0], mean[0])


def test_without_an_injected_generator_the_noise_is_not_reproducible() -> None:
    global_weights = ts(np.zeros(1000, np.float32))
    released = []
    for _ in range(2):
        strategy = CentralDP(FedAvg(LocalTraining(1, 0.1)), 1.0, 1.0, Counting())
        strategy.begin_step(global_weights)
        agg = strategy.make_aggregator(global_weights.specs)
        agg.add(ts(np.zeros(1000, np.float32)), 1.0)
        released.append(agg.mean()[0].copy())
    assert not np.array_equal(released[0], released[1])


def test_central_dp_refuses_robust_rules_and_a_step_without_its_global_model() -> None:
    robust = RobustAggregation(CoordinateMedian(), 3, 1 << 20)
    with pytest.raises(ConfigError, match="cannot be combined with 'median'"):
        CentralDP(FedAvg(LocalTraining(1, 0.1), robust=robust), 1.0, 1.0, Counting())
    strategy = CentralDP(FedAvg(LocalTraining(1, 0.1)), 1.0, 1.0, Counting())
    agg = strategy.make_aggregator(ts(np.zeros(2, np.float32)).specs)
    with pytest.raises(RecordError, match="no step has begun"):
        agg.add(ts(np.zeros(2, np.float32)), 1.0)
    with pytest.raises(RecordError, match="NaN"):
        strategy.begin_step(ts(np.zeros(2, np.float32)))
        agg.add(ts(np.array([np.nan, 0.0], np.float32)), 1.0)
    assert strategy.update_weight(UpdateInfo(UpdateKind.WEIGHTS, 0, num_samples=500)) == 1.0  # every update counts once


@pytest.mark.parametrize("mode", ["fedavg", "sync-gradients"])
def test_dp_trains_softmax_regression_and_reports_epsilon_every_round(tmp_path: Path, mode: str) -> None:
    rounds = 5
    training = {"mode": mode, "rounds": rounds, "steps_per_round": 10, "optimizer": "sgd", "learning_rate": 0.5}
    privacy = {"clip_norm": 2.0, "noise_multiplier": 0.2, "delta": 1e-5}
    fed = parse_federation(federation_doc(tmp_path, training=training, privacy=privacy))
    names = [w.name for w in fed.workers]
    x, y = blobs(600, seed=1)
    x_test, y_test = blobs(300, seed=2)
    server_model = SoftmaxRegression(4, 3)
    strategy = make_strategy(fed, server_model.trainable_mask())
    assert isinstance(strategy, CentralDP)
    strategy.rng = np.random.default_rng(0)  # injected: a reproducible run (it passes for any seed tried)
    workers = []
    for i, name in enumerate(names):
        model = SoftmaxRegression(4, 3)
        data = LocalData(x[i::2], y[i::2], batch_size=32, seed=i)
        workers.append((name, model, make_strategy(fed, model.trainable_mask()), data))
    result, seen, _ = federate_in_memory(server_model, strategy, round_plan(fed), workers, (x_test, y_test))
    assert result.accuracy >= 0.85
    per_round = 10 if mode == "sync-gradients" else 1
    reference, want = GaussianAccountant(0.2, 1e-5), []
    for _ in seen:
        for _ in range(per_round):
            reference.spend()
        want.append(reference.epsilon())
    assert [m.epsilon for m in seen] == pytest.approx(want)
    assert all(a < b for a, b in itertools.pairwise(want))  # it grows with every round


def test_epsilon_reaches_metrics_jsonl_and_the_console_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one console line per round
    path = tmp_path / "metrics.jsonl"
    recorder = MetricsRecorder(path, 2, live=False)
    metrics = dict(round=1, version=1, loss=0.5, accuracy=0.9, train_loss=0.6, bytes_in=1, bytes_out=1, round_s=0.1)
    recorder.record(RoundMetrics(**metrics, contributors=2, rejected=0, epsilon=1.234567))
    recorder.record(RoundMetrics(**metrics, contributors=2, rejected=0))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["epsilon"] == 1.234567 and lines[1]["epsilon"] is None
    shown = [line for line in capsys.readouterr().err.splitlines() if line.startswith("round")]
    assert len(shown) == 2 and shown[0].endswith("epsilon 1.235") and "epsilon" not in shown[1]
