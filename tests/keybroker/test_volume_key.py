"""`tdxfl volume` takes its LUKS key from the key broker, over RA-TLS, never from a person."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tdxfl.cli.volume import broker_key_source, resolve_key, volume
from tdxfl.errors import KeyRefused
from tdxfl.keybroker.keystore import Keystore

from kb_support import BROKER_MRTD, GOOD, OTHER, Running


def federation_file(tmp_path: Path, broker: Running, mrtd: bytes) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(f"""
[[party]]
name = "ps"
role = "ps"
address = "127.0.0.1:1"
[[party]]
name = "worker-1"
role = "worker"
[attestation]
mode = "simulated"
[attestation.simulated]
mrtd = "{mrtd.hex()}"
[keybroker]
address = "{broker.address}"
enroll_address = "{broker.enroll_address}"
[policy.workers]
mrtd = "any"
[policy.ps]
mrtd = "any"
[policy.keybroker]
tee = ["simulated"]
mrtd = ["{BROKER_MRTD.hex()}"]
[faults]
connect_retries = 1
[output]
dir = "{tmp_path / 'out'}"
""")
    return path


def test_volume_key_released_by_broker(tmp_path: Path, broker: Running, keystore: Keystore) -> None:
    fetch = broker_key_source(str(federation_file(tmp_path, broker, GOOD)), "worker-1", "model")
    key = resolve_key(key_env=None, key_fd=None, volume_id="ckpt.img", broker=fetch)
    assert key == keystore.get("model").key


def test_volume_key_refused_to_unlisted_td(tmp_path: Path, broker: Running) -> None:
    fetch = broker_key_source(str(federation_file(tmp_path, broker, OTHER)), "worker-1", "model")
    with pytest.raises(KeyRefused, match="refused key 'model'.*MRTD"):
        resolve_key(key_env=None, key_fd=None, volume_id="ckpt.img", broker=fetch)


def test_volume_cli_needs_exactly_one_key_source(tmp_path: Path, broker: Running) -> None:
    fed = federation_file(tmp_path, broker, GOOD)
    runner = CliRunner()
    none = runner.invoke(volume, ["create", str(tmp_path / "a.img")])
    assert none.exit_code != 0 and "no key source" in none.output
    both = runner.invoke(volume, ["create", str(tmp_path / "b.img"), "-f", str(fed), "--party", "worker-1", "--key-env", "X"])
    assert both.exit_code != 0 and "only one key source" in both.output
