"""The broker keystore: sealed at rest, refuses wrong passphrases and tampering, never leaks keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kb_support import FAST_N, GOOD, PASSPHRASE, sim_policy
from tdxfl.attestation.policy import Policy
from tdxfl.errors import ConfigError, SealedFileError, WrongKey
from tdxfl.keybroker.keystore import Keystore


def make(tmp_path: Path) -> Keystore:
    return Keystore.create(tmp_path / "ks", passphrase=PASSPHRASE, scrypt_n=FAST_N)


def test_keys_round_trip_with_policy_and_roles(tmp_path: Path) -> None:
    ks = make(tmp_path)
    policy = sim_policy(GOOD, rtmr3=["ab" * 48])
    info = ks.new_key("model", policy, ["ps", "worker"])
    assert info.name == "model" and info.roles == ("ps", "worker")
    again = Keystore.open(tmp_path / "ks", passphrase=PASSPHRASE)
    entry = again.get("model")
    assert entry.key == ks.get("model").key and len(entry.key) == 32
    assert entry.policy == policy and entry.roles == ("ps", "worker")
    assert [i.name for i in again.list()] == ["model"]
    assert entry.key.hex() not in repr(entry) and entry.key.hex() not in repr(again.list())


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    make(tmp_path).new_key("model", sim_policy(GOOD), ["ps"])
    with pytest.raises(WrongKey, match="wrong passphrase"):
        Keystore.open(tmp_path / "ks", passphrase="not the passphrase")
    with pytest.raises(ConfigError, match="protected by a passphrase; none was given"):
        Keystore.open(tmp_path / "ks")
    with pytest.raises(ConfigError, match="passphrase is empty"):
        Keystore.open(tmp_path / "ks", passphrase="")


def test_tampered_keystore_is_refused(tmp_path: Path) -> None:
    make(tmp_path).new_key("model", sim_policy(GOOD), ["ps"])
    path = tmp_path / "ks"
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SealedFileError, match="damaged|tampered") as info:
        Keystore.open(path, passphrase=PASSPHRASE)
    assert not isinstance(info.value, WrongKey)  # the header authenticated: the passphrase is right
    path.write_bytes(bytes(data[:-60]))
    with pytest.raises(SealedFileError, match="damaged") as info:
        Keystore.open(path, passphrase=PASSPHRASE)
    assert not isinstance(info.value, WrongKey)


def test_missing_or_foreign_keystore_is_a_sealed_file_error(tmp_path: Path) -> None:
    with pytest.raises(SealedFileError, match="no keystore at"):
        Keystore.open(tmp_path / "absent", passphrase=PASSPHRASE)
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04 not a keystore\n")
    with pytest.raises(SealedFileError, match="not a tdxfl keystore"):
        Keystore.open(tmp_path / "foreign", passphrase=PASSPHRASE)


def test_edited_kdf_parameters_that_cannot_derive_a_key_are_refused(tmp_path: Path) -> None:
    make(tmp_path)
    path = tmp_path / "ks"
    path.write_bytes(path.read_bytes().replace(b'"n":16384', b'"n":1000', 1))
    with pytest.raises(SealedFileError, match="KDF parameters are invalid") as info:
        Keystore.open(path, passphrase=PASSPHRASE)
    assert not isinstance(info.value, WrongKey)


def test_weakened_kdf_parameters_in_the_clear_header_are_refused(tmp_path: Path) -> None:
    make(tmp_path)
    path = tmp_path / "ks"
    path.write_bytes(path.read_bytes().replace(b'"n":16384', b'"n":32768', 1))
    with pytest.raises(WrongKey, match="wrong passphrase or key file, or the file was tampered"):
        Keystore.open(path, passphrase=PASSPHRASE)


def test_key_file_protection(tmp_path: Path) -> None:
    key_file = tmp_path / "wrap.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    ks = Keystore.create(tmp_path / "ks", key_file=key_file)
    ks.new_key("model", sim_policy(GOOD), ["ps"])
    assert Keystore.open(tmp_path / "ks", key_file=key_file).get("model").key == ks.get("model").key
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with pytest.raises(WrongKey, match="wrong passphrase or key file"):
        Keystore.open(tmp_path / "ks", key_file=other)
    other.chmod(0o644)
    with pytest.raises(ConfigError, match="group/others"):
        Keystore.open(tmp_path / "ks", key_file=other)


def test_invalid_requests_are_refused(tmp_path: Path) -> None:
    ks = make(tmp_path)
    ks.new_key("model", sim_policy(GOOD), ["ps"])
    with pytest.raises(ConfigError, match="already exists"):
        ks.new_key("model", sim_policy(GOOD), ["ps"])
    with pytest.raises(ConfigError, match="key name"):
        ks.new_key("../escape", sim_policy(GOOD), ["ps"])
    with pytest.raises(ConfigError, match="at least one role"):
        ks.new_key("other", sim_policy(GOOD), [])
    with pytest.raises(ConfigError, match="no key named"):
        ks.get("missing")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        make(tmp_path)
    with pytest.raises(ConfigError, match="at least 8"):
        Keystore.create(tmp_path / "weak", passphrase="short", scrypt_n=FAST_N)
    with pytest.raises(TypeError, match="policy must be"):  # a caller's bug, not a refusal
        ks.new_key("other", {"mrtd": "any"}, ["ps"])  # type: ignore[arg-type]


def test_a_serving_instance_sees_keys_added_by_another_process(tmp_path: Path) -> None:
    serving = make(tmp_path)
    cli = Keystore.open(tmp_path / "ks", passphrase=PASSPHRASE)
    cli.new_key("late", Policy.from_dict({"tee": ["simulated"], "mrtd": "any"}), ["worker"])
    assert serving.get("late").key == cli.get("late").key
    serving.new_key("later", sim_policy(GOOD), ["ps"])  # does not drop "late"
    assert {i.name for i in Keystore.open(tmp_path / "ks", passphrase=PASSPHRASE).list()} == {"late", "later"}
    cli.set_policy("late", roles=["ps"])
    assert serving.get("late").roles == ("ps",)


def test_keystore_file_holds_no_plaintext(tmp_path: Path) -> None:
    ks = make(tmp_path)
    ks.new_key("model", sim_policy(GOOD), ["ps"])
    data = (tmp_path / "ks").read_bytes()
    key = ks.get("model").key
    assert key not in data and key.hex().encode() not in data and b"model" not in data
    assert GOOD.hex().encode() not in data  # policies are sealed too
    assert (tmp_path / "ks").stat().st_mode & 0o077 == 0
