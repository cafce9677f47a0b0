"""`tdxfl volume` takes its LUKS key from the key broker, over RA-TLS, never from a person."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedtools import free_port
from kb_support import BROKER_MRTD, GOOD, OTHER, Running
from tdxfl.cli.volume import broker_key_source, resolve_key, volume
from tdxfl.errors import AttestationRefused, KeyRefused, Unavailable
from tdxfl.keybroker.keystore import Keystore


def federation_file(
    tmp_path: Path, broker: Running, mrtd: bytes, *, broker_mrtd: bytes = BROKER_MRTD, address: str = ""
) -> Path:
    """A federation whose worker-1 is a simulated TD with ``mrtd``, and whose broker must have ``broker_mrtd``."""
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
address = "{address or broker.address}"
enroll_address = "{address or broker.enroll_address}"
[policy.workers]
mrtd = "any"
[policy.ps]
mrtd = "any"
[policy.keybroker]
tee = ["simulated"]
mrtd = ["{broker_mrtd.hex()}"]
[faults]
connect_retries = 1
connect_backoff_s = 0.01
[output]
dir = "{tmp_path / "out"}"
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
    both = runner.invoke(
        volume, ["create", str(tmp_path / "b.img"), "-f", str(fed), "--party", "worker-1", "--key-env", "X"]
    )
    assert both.exit_code != 0 and "only one key source" in both.output


def test_volume_key_from_a_broker_we_refuse(tmp_path: Path, broker: Running) -> None:
    fetch = broker_key_source(str(federation_file(tmp_path, broker, GOOD, broker_mrtd=OTHER)), "worker-1", "model")
    with pytest.raises(
        AttestationRefused, match="we refused keybroker"
    ):  # the tree's class, whatever the transport raises
        resolve_key(key_env=None, key_fd=None, volume_id="ckpt.img", broker=fetch)


def test_volume_key_from_an_unreachable_broker(tmp_path: Path, broker: Running) -> None:
    fed = federation_file(tmp_path, broker, GOOD, address=f"127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match="after 2 attempts"):
        resolve_key(
            key_env=None, key_fd=None, volume_id="ckpt.img", broker=broker_key_source(str(fed), "worker-1", "model")
        )


@pytest.mark.parametrize(
    "mrtd,broker_mrtd,unreachable,code",
    [(OTHER, BROKER_MRTD, False, 4), (GOOD, OTHER, False, 3), (GOOD, BROKER_MRTD, True, 6)],
    ids=["key-refused", "broker-refused", "broker-unreachable"],
)
def test_volume_cli_exit_status_names_the_broker_outcome(
    tmp_path: Path, broker: Running, mrtd: bytes, broker_mrtd: bytes, unreachable: bool, code: int
) -> None:
    address = f"127.0.0.1:{free_port()}" if unreachable else ""
    fed = federation_file(tmp_path, broker, mrtd, broker_mrtd=broker_mrtd, address=address)
    image = tmp_path / "ckpt.img"
    result = CliRunner().invoke(volume, ["create", str(image), "-f", str(fed), "--party", "worker-1"])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("tdxfl volume create: ") and result.stderr.count("\n") == 1, result.stderr
    assert not image.exists()
