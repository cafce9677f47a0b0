"""``tdxfl attest --task PATH``: the task digest, and a policy block that pins it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tdxfl.attestation.code_identity import digest_task
from tdxfl.attestation.eventlog import extend
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.report import parse_quote
from tdxfl.attestation.tdx.rtmr import SysfsRtmr3
from tdxfl.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def task(tmp_path: Path) -> Path:
    pkg = tmp_path / "mytask"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("def train():\n    return 1\n")
    return pkg


def test_attest_prints_the_task_digest_and_pins_it(task: Path) -> None:
    result = run("attest", "--simulated", "--task", str(task))
    assert result.exit_code == 0, result.output
    digest = digest_task(task)
    assert f"# task               {digest.hex()}" in result.output
    policy = Policy.from_dict(tomllib.loads(result.output))
    assert policy.task == frozenset({digest})
    # RTMR3 is pinned as it will be once the party has measured the task (the simulated TD starts at zero)
    assert policy.rtmr3 == frozenset({extend(bytes(48), digest)})
    assert f"# rtmr3 with task    {extend(bytes(48), digest).hex()}" in result.output


def test_attest_without_task_pins_none() -> None:
    result = run("attest", "--simulated")
    assert result.exit_code == 0, result.output
    assert "task" not in result.output
    assert Policy.from_dict(tomllib.loads(result.output)).task is None


def test_attest_with_a_path_that_is_no_task(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no code")
    result = run("attest", "--simulated", "--task", str(tmp_path / "notes.txt"))
    assert result.exit_code == 2  # ConfigError
    assert "neither a .py file nor a package directory" in result.stderr


def test_attest_tdx_on_an_old_kernel_pins_the_task_by_claim(
    fake_configfs: Any, monkeypatch: pytest.MonkeyPatch, task: Path, tmp_path: Path, tdx_quote: bytes
) -> None:
    from tdxfl.attestation.tdx import configfs

    cls = type(fake_configfs())

    class Attester(cls):  # type: ignore[misc, valid-type]
        def __init__(self, root: Any) -> None:
            super().__init__(root)
            self.created: list[Path] = []
            self.rtmr3 = SysfsRtmr3(tmp_path / "absent" / "rtmr3:sha384")

    monkeypatch.setattr(configfs, "TdxAttester", Attester)
    result = run("attest", "--configfs", str(fake_configfs.root), "--task", str(task))
    assert result.exit_code == 0, result.output
    assert "RTMR3 is not extensible here (needs Linux >= 6.16)" in result.output
    policy = Policy.from_dict(tomllib.loads(result.output))
    assert policy.task == frozenset({digest_task(task)})
    assert policy.rtmr3 == frozenset({parse_quote(tdx_quote).report.rtmrs[3]})  # as quoted: nothing extends it
