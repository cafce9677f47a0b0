"""``tdxfl attest --task PATH``: the task digest, and a policy block that pins it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tdxfl.attestation.code_identity import digest_task
from tdxfl.attestation.eventlog import extend
from tdxfl.attestation.insecure_simulated import SimulatedAttester
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import TlsIdentity
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


def test_verify_quote_shows_and_judges_the_task_of_a_certificate(tmp_path: Path, task: Path) -> None:
    digest, other = digest_task(task), bytes(48)
    attester = SimulatedAttester()
    attester.extend_rtmr3(digest)
    cert = tmp_path / "cert.pem"
    cert.write_bytes(TlsIdentity.create(attester, "alice", task_digest=digest).cert_pem)
    policy = tmp_path / "policy.toml"
    policy.write_text(f'tee = ["simulated"]\nmrtd = "any"\ntask = ["{digest.hex()}"]\n')
    result = run("verify-quote", str(cert), "--policy", str(policy))
    assert result.exit_code == 0, result.output
    assert f"task:        {digest.hex()} (RTMR3 event log of 1 event(s) replayed)" in result.output
    json_out = run("verify-quote", str(cert), "--policy", str(policy), "--json").output
    assert '"rtmr3_log": [\n' in json_out and f'"task": "{digest.hex()}"' in json_out
    policy.write_text(f'tee = ["simulated"]\nmrtd = "any"\ntask = ["{other.hex()}"]\n')
    result = run("verify-quote", str(cert), "--policy", str(policy))
    assert result.exit_code == 3
    assert f"REFUSED: TASK {digest.hex()} is not allowed (policy allows: {other.hex()})" in result.output
