"""The federation file: the shipped example loads, typos and bad values are clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedtools import federation_doc
from tdxfl.config import ConfigError, apply_overrides, load_federation, parse_federation

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifar10-resnet50.toml"
MRTD = "ab" * 48


def test_example_federation_file_loads_once_measurements_are_filled_in() -> None:
    fed = load_federation(EXAMPLE, [f'policy.{p}.mrtd="{MRTD}"' for p in ("workers", "ps", "keybroker")])
    assert fed.ps.address == "10.0.0.10:50051" and [w.name for w in fed.workers] == ["worker-1", "worker-2"]
    assert fed.training.model == "resnet50" and fed.training.mode == "sync-gradients"
    assert fed.policy_for("workers").requires_real_tdx and not fed.policy_for("workers").allow_debug
    assert fed.attestation.mode == "tdx" and fed.quorum == 2
    assert fed.keybroker is not None and fed.keybroker.key == "model" and fed.output.seal_metrics


def test_placeholder_measurement_is_refused() -> None:
    with pytest.raises(ConfigError, match="not hex"):
        load_federation(EXAMPLE)


def test_cli_overrides_are_typed() -> None:
    doc = apply_overrides({}, ["training.rounds=3", "training.mode=fedavg", "faults.step_timeout_s=2.5", "x.flag=true"])
    assert doc == {"training": {"rounds": 3, "mode": "fedavg"}, "faults": {"step_timeout_s": 2.5}, "x": {"flag": True}}


@pytest.mark.parametrize(
    "section,table,needle",
    [
        ("training", {"rouns": 3}, "unknown keys in \\[training\\]: rouns"),
        ("training", {"mode": "async"}, "training.mode"),
        ("training", {"rounds": "ten"}, "training.rounds must be int"),
        ("faults", {"quorum": 5}, "quorum"),
        ("attestation", {"mode": "sgx"}, "attestation.mode"),
        ("policy", {"workers": {"allow_debug": "yes"}}, "true or false"),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, section: str, table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_federation(federation_doc(tmp_path, **{section: table}))


def test_default_enroll_and_data_addresses_and_digest(tmp_path: Path) -> None:
    doc = federation_doc(tmp_path)
    doc["party"][0] = {"name": "ps", "role": "ps", "address": "127.0.0.1:7000"}
    fed = parse_federation(doc)
    assert fed.ps.enroll_address == "127.0.0.1:7001"
    assert fed.ps.data_address == "127.0.0.1:7002"
    doc["training"]["rounds"] = 99
    assert parse_federation(doc).training_digest() != fed.training_digest()


def test_missing_policy_is_an_error(tmp_path: Path) -> None:
    doc = federation_doc(tmp_path)
    del doc["policy"]["ps"]
    with pytest.raises(ConfigError, match=r"\[policy.ps\] is required"):
        parse_federation(doc)


def test_sites_may_keep_the_same_task_code_at_different_paths(tmp_path: Path) -> None:
    doc = federation_doc(tmp_path, training={"task": "site-a/task.py"})
    here = parse_federation(doc)
    doc["training"]["task"] = "/srv/other/place/task.py"
    there = parse_federation(doc)
    code, other_code = bytes(48), bytes([1]) * 48
    assert here.training_digest(code) == there.training_digest(code)  # the code's digest decides
    assert here.training_digest(code) != there.training_digest(other_code)
