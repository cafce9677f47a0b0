"""``[strategy]`` and ``[privacy]``: validated combinations, the digest, and what ``make_strategy``
builds from them (on both sides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedtools import federation_doc
from tdxfl.config import ConfigError, Federation, load_federation, parse_federation
from tdxfl.engine.aggregators import CoordinateMedian, Krum, TrimmedMean
from tdxfl.engine.central_dp import CentralDP
from tdxfl.engine.optimizers import SGD, Adam, AdaptiveServerOptimizer
from tdxfl.engine.strategy import FedAvg, FedOpt, SyncGradients
from tdxfl.privacy.accounting import GaussianAccountant, calibrate_noise_multiplier
from tdxfl.wiring.ps import make_strategy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cifar10-resnet50.toml"
MASK = [True, True, False]


def fed(tmp_path: Path, mode: str = "fedavg", workers: int = 2, **sections: dict[str, Any]) -> Federation:
    doc = federation_doc(tmp_path, training={"mode": mode}, **sections)
    doc["party"] = [doc["party"][0]] + [{"name": f"w{i}", "role": "worker"} for i in range(workers)]
    return parse_federation(doc)


def test_the_default_is_the_existing_behaviour(tmp_path: Path) -> None:
    f = fed(tmp_path)
    assert f.strategy.name == "fedavg" and not f.privacy.enabled
    s = make_strategy(f, MASK)
    assert type(s) is FedAvg and s.robust is None and s.local.proximal_mu == 0.0
    sync = make_strategy(fed(tmp_path, mode="sync-gradients"), MASK)
    assert type(sync) is SyncGradients and isinstance(sync.optimizer, Adam) and sync.robust is None


@pytest.mark.parametrize(
    ("strategy", "rule", "lr"),
    [
        ({"name": "fedadam"}, "adam", 0.01),
        ({"name": "fedyogi", "server_learning_rate": 0.05}, "yogi", 0.05),
        ({"name": "fedadagrad", "beta1": 0.5, "tau": 0.1}, "adagrad", 0.1),
    ],
)
def test_adaptive_strategies(tmp_path: Path, strategy: dict[str, Any], rule: str, lr: float) -> None:
    s = make_strategy(fed(tmp_path, strategy=strategy), MASK)
    assert isinstance(s, FedOpt) and isinstance(s.optimizer, AdaptiveServerOptimizer)
    assert (s.optimizer.rule, s.optimizer.lr) == (rule, lr) and s.trainable == MASK
    assert (s.optimizer.b1, s.optimizer.tau) == (strategy.get("beta1", 0.9), strategy.get("tau", 1e-3))


def test_fedavgm_and_fedprox(tmp_path: Path) -> None:
    m = make_strategy(fed(tmp_path, strategy={"name": "fedavgm", "server_momentum": 0.7}), MASK)
    assert isinstance(m, FedOpt) and isinstance(m.optimizer, SGD)
    assert (m.optimizer.lr, m.optimizer.momentum) == (1.0, 0.7)
    p = make_strategy(fed(tmp_path, strategy={"name": "fedprox", "proximal_mu": 0.3}), MASK)
    assert type(p) is FedAvg and p.local.proximal_mu == 0.3
    # proximal_mu is FedProx's alone
    assert make_strategy(fed(tmp_path, strategy={"proximal_mu": 0.3}), MASK).local.proximal_mu == 0.0


@pytest.mark.parametrize("mode", ["fedavg", "sync-gradients"])
def test_robust_strategies_buffer_one_update_per_worker(tmp_path: Path, mode: str) -> None:
    cases: list[tuple[dict[str, Any], type, dict[str, Any]]] = [
        ({"name": "median"}, CoordinateMedian, {}),
        ({"name": "trimmed-mean", "trim_fraction": 0.25}, TrimmedMean, {"beta": 0.25}),
        ({"name": "krum", "byzantine": 2}, Krum, {"f": 2, "select": 1}),
        ({"name": "multi-krum", "byzantine": 1, "krum_select": 4}, Krum, {"f": 1, "select": 4}),
    ]
    for strategy, rule, attrs in cases:
        s = make_strategy(fed(tmp_path, mode, workers=7, strategy={**strategy, "max_buffer_mib": 64}), MASK)
        assert s.robust is not None and type(s.robust.rule) is rule
        assert {k: getattr(s.robust.rule, k) for k in attrs} == attrs
        assert (s.robust.capacity, s.robust.max_bytes) == (7, 64 * 2**20)


def test_privacy_wraps_the_strategy_with_its_accountant(tmp_path: Path) -> None:
    s = make_strategy(
        fed(tmp_path, strategy={"name": "fedadam"}, privacy={"clip_norm": 2, "noise_multiplier": 0.8, "delta": 1e-6}),
        MASK,
    )
    assert isinstance(s, CentralDP) and isinstance(s.inner, FedOpt)
    assert (s.clip_norm, s.noise_multiplier) == (2.0, 0.8)
    assert isinstance(s.accountant, GaussianAccountant) and s.accountant.delta == 1e-6


def test_target_epsilon_calibrates_the_noise_for_every_release(tmp_path: Path) -> None:
    """sync-gradients: rounds x steps_per_round releases (3 x 10 in the test federation file)."""
    privacy = {"clip_norm": 1.0, "target_epsilon": 4.0}
    s = make_strategy(fed(tmp_path, mode="sync-gradients", privacy=privacy), MASK)
    assert isinstance(s, CentralDP)
    assert s.noise_multiplier == pytest.approx(calibrate_noise_multiplier(4.0, 1e-5, 3 * 10))
    assert isinstance(make_strategy(fed(tmp_path, privacy=privacy), MASK), CentralDP)


@pytest.mark.parametrize(
    ("sections", "needle"),
    [
        (
            {"strategy": {"name": "fedsgd"}},
            "strategy.name must be one of 'fedavg', 'fedavgm', .*'multi-krum', got 'fedsgd'",
        ),
        ({"strategy": {"nme": "krum"}}, r"unknown keys in \[strategy\]: nme"),
        ({"strategy": {"byzantine": "one"}}, "strategy.byzantine must be int"),
        ({"privacy": {"clip": 1.0}}, r"unknown keys in \[privacy\]: clip"),
        (
            {"training": {"mode": "sync-gradients"}, "strategy": {"name": "fedprox"}},
            "fedprox.*needs training.mode = 'fedavg'",
        ),
        ({"training": {"mode": "sync-gradients"}, "strategy": {"name": "fedadam"}}, "training.optimizer"),
        ({"strategy": {"name": "fedprox", "proximal_mu": 0.0}}, "proximal_mu must be positive"),
        ({"strategy": {"name": "fedavgm", "server_momentum": 1.0}}, r"server_momentum must be in \[0, 1\)"),
        ({"strategy": {"name": "fedadam", "tau": 0.0}}, "tau must be positive"),
        ({"strategy": {"name": "krum"}}, "krum with strategy.byzantine = 1 needs at least 5 updates per step"),
        ({"strategy": {"name": "trimmed-mean"}}, "trimmed-mean needs a quorum of at least 3 updates per step, got 2"),
        ({"strategy": {"name": "trimmed-mean", "trim_fraction": 0.5}}, r"trim_fraction must be in \(0, 0.5\)"),
        ({"strategy": {"name": "median"}, "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0}}, "'median'"),
        ({"privacy": {"clip_norm": 1.0}}, "exactly one of privacy.noise_multiplier and privacy.target_epsilon"),
        ({"privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 3.0}}, "exactly one"),
        ({"privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1.0}}, r"delta must be in \(0, 1\)"),
        ({"privacy": {"clip_norm": -1.0}}, "clip_norm must be >= 0"),
    ],
)
def test_invalid_combinations_are_named(tmp_path: Path, sections: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_federation(federation_doc(tmp_path, **{"training": {"mode": "fedavg"}, **sections}))


def test_trimmed_mean_must_trim_at_the_quorum(tmp_path: Path) -> None:
    assert (
        fed(tmp_path, workers=5, strategy={"name": "trimmed-mean", "trim_fraction": 0.2}).strategy.trim_fraction == 0.2
    )
    with pytest.raises(ConfigError, match="trim_fraction = 0.1 trims nothing from 5 updates .* at least 0.2"):
        fed(tmp_path, workers=5, strategy={"name": "trimmed-mean"})


def test_krum_and_multi_krum_follow_the_quorum(tmp_path: Path) -> None:
    assert fed(tmp_path, workers=5, strategy={"name": "krum"}).strategy.byzantine == 1
    with pytest.raises(ConfigError, match="the quorum is 4"):
        fed(tmp_path, workers=5, strategy={"name": "krum"}, faults={"quorum": 4})
    with pytest.raises(ConfigError, match="krum_select must be 0 \\(n - f\\) or at most 4"):
        fed(tmp_path, workers=5, strategy={"name": "multi-krum", "krum_select": 5})


def test_strategy_and_privacy_are_in_the_digest(tmp_path: Path) -> None:
    base = fed(tmp_path).training_digest()
    digests = {
        base,
        fed(tmp_path, strategy={"name": "fedavgm"}).training_digest(),
        fed(tmp_path, strategy={"name": "fedavgm", "server_momentum": 0.5}).training_digest(),
        fed(tmp_path, privacy={"clip_norm": 1.0, "noise_multiplier": 1.0}).training_digest(),
        fed(tmp_path, privacy={"clip_norm": 1.0, "noise_multiplier": 1.1}).training_digest(),
    }
    assert len(digests) == 5 and fed(tmp_path).training_digest() == base


def test_the_example_documents_valid_strategy_and_privacy_tables() -> None:
    mrtd = [f'policy.{p}.mrtd="{"ab" * 48}"' for p in ("workers", "ps", "keybroker")]
    f = load_federation(EXAMPLE, mrtd)
    assert f.strategy.name == "fedavg" and not f.privacy.enabled
    dp = ["training.mode=fedavg", "strategy.name=fedyogi", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0"]
    f = load_federation(EXAMPLE, [*mrtd, *dp])
    assert f.strategy.name == "fedyogi" and f.privacy.enabled
