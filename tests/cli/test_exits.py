"""The one exit-code map of the ``tdxfl`` CLI, and its one-line error output, on real commands."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from tdxfl.attestation.policy import Policy
from tdxfl.cli import main
from tdxfl.cli.exits import EXIT_CODES, EXIT_OK, exit_code, exit_status_summary, handle_errors, one_line
from tdxfl.errors import (
    AttestationError,
    AttestationRefused,
    ConfigError,
    FederationError,
    KeyRefused,
    LinkError,
    RecordError,
    SealedFileError,
    TdxflError,
    Unavailable,
    WrongKey,
)
from tdxfl.keybroker.audit import AuditChainError
from tdxfl.keybroker.keystore import Keystore
from tdxfl.store.sealed import seal_file

DOCUMENTED = {
    TdxflError("x"): 1,
    RecordError("x"): 1,
    ConfigError("x"): 2,
    AttestationError("x"): 3,
    AttestationRefused("x"): 3,
    KeyRefused("model", "x"): 4,
    SealedFileError("x"): 5,
    WrongKey("x"): 5,
    AuditChainError(3, "x"): 5,
    Unavailable("x"): 6,
    LinkError("x"): 6,
    FederationError("x"): 7,
    KeyboardInterrupt(): 130,
}


@pytest.mark.parametrize("error,code", DOCUMENTED.items(), ids=[type(e).__name__ for e in DOCUMENTED])
def test_each_error_class_has_its_documented_code(error: BaseException, code: int) -> None:
    assert exit_code(error) == code


def test_the_map_is_the_documented_one_and_read_only() -> None:
    assert EXIT_OK == 0
    assert {cls: EXIT_CODES[cls] for cls in EXIT_CODES} == {
        type(e): c for e, c in DOCUMENTED.items() if type(e) in EXIT_CODES
    }
    assert set(EXIT_CODES) == {type(e) for e in DOCUMENTED} - {RecordError, AuditChainError}
    with pytest.raises(TypeError):
        EXIT_CODES[ValueError] = 9  # type: ignore[index]


def test_help_lists_the_exit_statuses() -> None:
    summary = exit_status_summary()
    assert summary.startswith("0 success; 1 TdxflError; 2 ConfigError; 3 AttestationError, AttestationRefused; ")
    assert summary.endswith("; 6 Unavailable, LinkError; 7 FederationError; 130 KeyboardInterrupt")
    assert "4 KeyRefused; 5 SealedFileError, WrongKey" in summary
    assert "Exit status: 0 success" in run("--help").output


def test_a_subclass_gets_its_nearest_listed_base() -> None:
    class Specific(WrongKey):
        pass

    class Other(TdxflError):
        pass

    assert exit_code(Specific("x")) == 5 and exit_code(Other("x")) == 1


def test_one_line_escapes_every_line_break() -> None:
    assert one_line("a\nb\r\nc\u2028d\x0be") == "a\\nb\\r\\nc\\u2028d\\x0be"
    assert one_line("no breaks: C:\\path") == "no breaks: C:\\path"


def test_handle_errors_prints_one_line_and_exits_with_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done, handle_errors("tdxfl thing"):
        raise WrongKey("first line\nsecond line")
    assert done.value.code == 5
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "tdxfl thing: first line\\nsecond line\n"


def test_handle_errors_as_a_decorator_and_for_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    @handle_errors("tdxfl slow")
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as done:
        interrupted()
    assert done.value.code == 130 and capsys.readouterr().err == "tdxfl slow: interrupted\n"
    with pytest.raises(SystemExit) as done, handle_errors("tdxfl x"):
        raise Unavailable("")
    assert done.value.code == 6 and capsys.readouterr().err == "tdxfl x: Unavailable\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), click.UsageError("usage"), SystemExit(4)])
def test_handle_errors_lets_everything_else_through(error: BaseException, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(type(error)) as raised, handle_errors("tdxfl x"):
        raise error
    assert raised.value is error and capsys.readouterr().err == ""


# -- real commands ------------------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result: Result, prog: str, code: int) -> str:
    """The command failed with ``code`` and said why in exactly one stderr line starting ``prog: ``."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith(f"{prog}: ") and result.stderr.endswith("\n"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len(prog) + 2 : -1]


@pytest.fixture
def keystore(tmp_path: Path) -> tuple[Path, Path]:
    """A key-file-protected keystore with keys ``a`` and ``b``: (keystore, key file)."""
    key_file = tmp_path / "wrap.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    ks = Keystore.create(tmp_path / "keystore", key_file=key_file)
    policy = Policy.from_dict({"tee": ["simulated"], "mrtd": "any"})
    ks.new_key("a", policy, ["ps"])
    ks.new_key("b", policy, ["ps"])
    return ks.path, key_file


def unseal_file(keystore: tuple[Path, Path], sealed: Path, key: str, out: Path) -> Result:
    path, key_file = keystore
    return run("unseal-file", str(sealed), "--keystore", str(path), "--key-file", str(key_file), "--key", key,
               "--label", "metrics", "--out", str(out))  # fmt: skip


def test_unseal_file_with_the_wrong_key_exits_5(tmp_path: Path, keystore: tuple[Path, Path]) -> None:
    sealed = tmp_path / "metrics.jsonl.sealed"
    seal_file(sealed, Keystore.open(keystore[0], key_file=keystore[1]).get("a").key, b"{}\n", label="metrics")
    out = tmp_path / "metrics.jsonl"
    message = assert_one_line_error(unseal_file(keystore, sealed, "b", out), "tdxfl unseal-file", 5)
    assert message == f"{sealed}: wrong key or tampered header"
    assert not out.exists()
    ok = unseal_file(keystore, sealed, "a", out)
    assert ok.exit_code == 0 and out.read_bytes() == b"{}\n"


def test_unseal_file_with_an_unknown_key_name_exits_2(tmp_path: Path, keystore: tuple[Path, Path]) -> None:
    sealed = tmp_path / "x.sealed"
    sealed.write_bytes(b"irrelevant")
    message = assert_one_line_error(unseal_file(keystore, sealed, "nope", tmp_path / "out"), "tdxfl unseal-file", 2)
    assert message == "no key named 'nope' in the keystore"


def test_unseal_file_of_a_damaged_file_exits_5(tmp_path: Path, keystore: tuple[Path, Path]) -> None:
    sealed = tmp_path / "x.sealed"
    sealed.write_bytes(b"not a sealed file at all" * 4)
    message = assert_one_line_error(unseal_file(keystore, sealed, "a", tmp_path / "out"), "tdxfl unseal-file", 5)
    assert message.endswith("not a sealed file (bad magic)")


def test_verify_quote_on_a_garbage_file_exits_3(tmp_path: Path) -> None:
    garbage = tmp_path / "quote.bin"
    garbage.write_bytes(b"this is not a quote")
    result = run("verify-quote", str(garbage))
    assert result.exit_code == 3, result.output
    assert "REFUSED: not a valid TDX quote" in result.stdout


def test_keybroker_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    result = run("keybroker", "list", "--config", str(tmp_path / "broker.toml"))
    message = assert_one_line_error(result, "tdxfl keybroker list", 2)
    assert message == f"broker config {tmp_path / 'broker.toml'} not found"


def test_keybroker_list_with_the_wrong_key_file_exits_5(tmp_path: Path, keystore: tuple[Path, Path]) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    result = run("keybroker", "list", "--keystore", str(keystore[0]), "--key-file", str(other))
    message = assert_one_line_error(result, "tdxfl keybroker list", 5)
    assert "wrong passphrase or key file" in message


def test_volume_close_with_an_invalid_name_exits_2(tmp_path: Path) -> None:
    result = run("volume", "close", "--name", "../etc", "--mount", str(tmp_path / "m"))
    message = assert_one_line_error(result, "tdxfl volume close", 2)
    assert message.startswith("invalid volume name '../etc'")


def test_click_usage_errors_still_exit_2() -> None:
    result = run("unseal-file")
    assert result.exit_code == 2 and "Missing argument" in result.output
