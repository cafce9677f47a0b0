"""tdxfl.store.luks and ``tdxfl volume`` on this host, whose kernel has no device-mapper.

Without device-mapper cryptsetup can still format a file as LUKS2 (without integrity, which
needs dm-integrity to initialise its tags), dump the header and test a key; opening or creating
a real volume must fail with the clear "no device-mapper" error. The real lifecycle is in
test_luks_vm.py. cryptsetup comes from scripts/provision-vm-test.sh (CI runs it first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from tdxfl.cli import volume as volume_cli
from tdxfl.errors import ConfigError, SealedFileError, TdxflError, WrongKey
from tdxfl.store import luks
from tdxfl.store.luks import NO_DEVICE_MAPPER_MESSAGE, WRONG_KEY_MESSAGE

KEY = bytes(range(7, 7 + 32)) + b"\n\x00 tail"  # binary, with a newline and NUL: must pass intact
WRONG = bytes(32)
SIZE = 32 * 1024 * 1024
FAST_KDF: dict[str, Any] = {"pbkdf": "pbkdf2", "pbkdf_iterations": 1000}


@contextlib.contextmanager
def machine_lacks(match: str) -> Iterator[pytest.ExceptionInfo[TdxflError]]:
    """Expect the error for something this machine lacks: a plain TdxflError, not a volume error."""
    with pytest.raises(TdxflError, match=match) as info:
        yield info
    assert type(info.value) is TdxflError, repr(info.value)


def _secret_forms(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), key.hex().upper().encode(), key[:32]]


@pytest.fixture(scope="module")
def cryptsetup() -> str:
    path = shutil.which("cryptsetup") or shutil.which("cryptsetup", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("cryptsetup is not installed: run scripts/provision-vm-test.sh (CI runs it before pytest)")
    return path


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every subprocess.run made by tdxfl.store.luks (argv, stdin input, env)."""
    recorded: list[dict[str, Any]] = []
    real_run = subprocess.run

    def spy(argv: Any, *args: Any, **kwargs: Any) -> Any:
        recorded.append({"argv": list(argv), "input": kwargs.get("input"), "env": kwargs.get("env")})
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(luks.subprocess, "run", spy)
    return recorded


@pytest.fixture
def image(tmp_path: Path, cryptsetup: str) -> Path:
    path = luks.allocate_image(tmp_path / "volume.img", SIZE)
    luks.format_volume(path, KEY, integrity=None, **FAST_KDF)
    return path


def _assert_no_key_in(text: str | bytes) -> None:
    blob = text.encode() if isinstance(text, str) else text
    for form in _secret_forms(KEY):
        assert form not in blob


def test_format_dump_and_test_key(image: Path) -> None:
    assert luks.is_luks(image)
    dump = luks.luks_dump(image)
    assert " ".join(dump.split()).startswith("LUKS header information Version: 2")
    assert "cipher: aes-xts-plain64" in dump
    assert "Cipher key: 512 bits" in dump
    luks.verify_key(image, KEY)
    with pytest.raises(WrongKey, match=WRONG_KEY_MESSAGE) as info:
        luks.verify_key(image, WRONG)
    _assert_no_key_in(str(info.value))
    # A key that differs only after a newline is a different key (stdin is read to EOF, raw).
    with pytest.raises(WrongKey):
        luks.verify_key(image, KEY[:32] + b"\n")


def test_key_never_in_argv_env_or_image(tmp_path: Path, cryptsetup: str, calls: list[dict[str, Any]]) -> None:
    path = luks.allocate_image(tmp_path / "volume.img", SIZE)
    luks.format_volume(path, KEY, integrity=None, **FAST_KDF)
    luks.verify_key(path, KEY)
    with pytest.raises(WrongKey):
        luks.verify_key(path, WRONG)
    luks.luks_dump(path)
    assert [c["argv"][1] for c in calls] == ["luksFormat", "open", "open", "luksDump"]
    for call in calls:
        for arg in call["argv"]:
            _assert_no_key_in(arg)
        for name, value in (call["env"] or {}).items():
            _assert_no_key_in(name)
            _assert_no_key_in(value)
    assert calls[0]["input"] == KEY and calls[1]["input"] == KEY and calls[2]["input"] == WRONG
    assert calls[0]["argv"][-3:-1] == ["--key-file", "-"]
    assert calls[3]["input"] == b""
    _assert_no_key_in(path.read_bytes())
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_not_a_luks_volume(tmp_path: Path, cryptsetup: str) -> None:
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 65536)
    assert not luks.is_luks(plain)
    with pytest.raises(WrongKey, match=WRONG_KEY_MESSAGE):
        luks.verify_key(plain, KEY)


def test_create_volume_without_device_mapper_leaves_nothing(
    tmp_path: Path, cryptsetup: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(luks, "device_mapper_available", lambda **_: False)
    target = tmp_path / "new.img"
    with machine_lacks("no device-mapper"):
        luks.create_volume(target, KEY, SIZE, **FAST_KDF)
    assert not target.exists()


def test_integrity_format_needs_device_mapper(tmp_path: Path, cryptsetup: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(luks, "device_mapper_available", lambda **_: False)
    path = luks.allocate_image(tmp_path / "volume.img", SIZE)
    with machine_lacks("no device-mapper"):
        luks.format_volume(path, KEY, **FAST_KDF)  # --integrity hmac-sha256 needs dm-integrity


def test_open_volume_when_dm_reports_missing(image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(luks, "device_mapper_available", lambda **_: False)
    with machine_lacks(r"no device-mapper \(dm-crypt\)"):
        luks.open_volume(image, KEY, "tdxfl-host-test", tmp_path / "mnt")


def test_missing_cryptsetup_says_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(luks.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(luks.os, "access", lambda *a, **k: False)
    (tmp_path / "x.img").write_bytes(b"\0" * 4096)
    with machine_lacks("install cryptsetup"):
        luks.verify_key(tmp_path / "x.img", KEY)
    with machine_lacks("install cryptsetup"):
        luks.open_volume(tmp_path / "x.img", KEY, "n", tmp_path / "mnt")


def test_program_vanishing_between_lookup_and_run(tmp_path: Path) -> None:
    with machine_lacks("install cryptsetup") as info:
        luks._run([str(tmp_path / "no-such-dir" / "cryptsetup"), "luksDump", "x"], what="luksDump", key=KEY)
    _assert_no_key_in(str(info.value))


def test_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="32 to 8192 bytes") as info:
        luks.verify_key(tmp_path / "x.img", b"short key")
    assert "short key" not in str(info.value)
    with pytest.raises(TypeError):
        luks.verify_key(tmp_path / "x.img", "a string is not a key" * 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid volume name"):
        luks.close_volume("../etc", tmp_path)
    with pytest.raises(ConfigError, match="volume size"):
        luks.allocate_image(tmp_path / "small.img", 1024 * 1024)
    with pytest.raises(ConfigError, match="pbkdf"):
        luks._pbkdf_args("scrypt", None, None, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="argon2id only"):
        luks._pbkdf_args("pbkdf2", 65536, None, None)
    assert luks._pbkdf_args("argon2id", 65536, 500, None) == [
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "65536",
        "--iter-time",
        "500",
    ]
    with pytest.raises(SealedFileError, match="no such file"):
        luks.verify_key(tmp_path / "missing.img", KEY)


def test_allocate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = luks.allocate_image(tmp_path / "a.img", SIZE)
    assert path.stat().st_size == SIZE
    with pytest.raises(ConfigError, match="already exists"):
        luks.allocate_image(path, SIZE)


def test_close_volume_that_is_not_open_is_a_no_op(tmp_path: Path) -> None:
    luks.close_volume("tdxfl-not-open", tmp_path / "not-mounted")


# --- the CLI ---------------------------------------------------------------------------------


def _invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(volume_cli.volume, args, env=env, catch_exceptions=False)


def test_parse_size() -> None:
    assert volume_cli.parse_size("64M") == 64 << 20
    assert volume_cli.parse_size("64MiB") == 64 << 20
    assert volume_cli.parse_size("1g") == 1 << 30
    assert volume_cli.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        volume_cli.parse_size("lots")


def test_resolve_key_from_env_removes_the_variable() -> None:
    env = {"K": KEY.hex(), "OTHER": "x"}
    assert volume_cli.resolve_key(key_env="K", key_fd=None, volume_id="v", environ=env) == KEY
    assert env == {"OTHER": "x"}


def test_resolve_key_from_pipe() -> None:
    r, w = os.pipe()
    os.write(w, KEY)
    os.close(w)
    assert volume_cli.resolve_key(key_env=None, key_fd=r, volume_id="v") == KEY
    with pytest.raises(OSError):
        os.fstat(r)  # closed after reading


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_env": "K", "key_fd": 3}, "only one of"),
        ({"key_env": "MISSING", "key_fd": None}, "not set"),
        ({"key_env": "BAD", "key_fd": None}, "does not hold hex"),
        ({"key_env": "SHORT", "key_fd": None}, "32 to 8192 bytes"),
        ({"key_env": None, "key_fd": None}, "no key source for volume"),
    ],
)
def test_resolve_key_refusals(kwargs: dict[str, Any], message: str) -> None:
    env = {"K": KEY.hex(), "BAD": "not hex at all", "SHORT": "abcd"}
    with pytest.raises(click.UsageError, match=message) as info:
        volume_cli.resolve_key(volume_id="v", environ=env, **kwargs)
    _assert_no_key_in(info.value.format_message())


def test_resolve_key_broker_hook() -> None:
    seen: list[str] = []

    def broker(volume_id: str) -> bytes:
        seen.append(volume_id)
        return KEY

    assert volume_cli.resolve_key(key_env=None, key_fd=None, volume_id="ckpt.img", broker=broker) == KEY
    assert seen == ["ckpt.img"]


def test_cli_create_and_open_report_no_device_mapper(
    tmp_path: Path, cryptsetup: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(luks, "device_mapper_available", lambda **_: False)
    env = {"TDXFL_TEST_VOLUME_KEY": KEY.hex()}
    target = tmp_path / "cli.img"
    result = CliRunner().invoke(
        volume_cli.volume,
        [
            "create",
            str(target),
            "--size",
            "32M",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-iterations",
            "1000",
            "--key-env",
            "TDXFL_TEST_VOLUME_KEY",
        ],
        env=env,
    )
    assert result.exit_code == 1, result.output
    assert NO_DEVICE_MAPPER_MESSAGE in result.output
    assert not target.exists()
    existing = luks.allocate_image(tmp_path / "existing.img", SIZE)
    result = CliRunner().invoke(
        volume_cli.volume,
        ["open", str(existing), "--name", "t1", "--mount", str(tmp_path / "m"), "--key-env", "TDXFL_TEST_VOLUME_KEY"],
        env=env,
    )
    assert result.exit_code == 1, result.output
    assert NO_DEVICE_MAPPER_MESSAGE in result.output
    _assert_no_key_in(result.output)


def test_cli_without_key_source_points_at_the_broker(tmp_path: Path) -> None:
    result = CliRunner().invoke(volume_cli.volume, ["create", str(tmp_path / "x.img"), "--size", "32M"])
    assert result.exit_code == 2
    assert "no key source for volume" in result.output
    assert not (tmp_path / "x.img").exists()


def test_cli_close_is_idempotent(tmp_path: Path) -> None:
    result = _invoke(["close", "--name", "tdxfl-not-open", "--mount", str(tmp_path / "m")])
    assert result.exit_code == 0 and "closed tdxfl-not-open" in result.output


def test_commands_exported() -> None:
    assert [volume_cli.volume] == volume_cli.COMMANDS
    assert set(volume_cli.volume.commands) == {"create", "open", "close"}
