"""``tdxfl keybroker``: serve, new-key, set-policy, list, verify-audit; broker.toml parsing."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fedtools import free_port
from kb_support import GOOD, PASSPHRASE, sim_policy
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd
from tdxfl.cli.keybroker import keybroker
from tdxfl.config.broker import load_broker_config, parse_broker_config
from tdxfl.errors import ConfigError
from tdxfl.keybroker.client import fetch_key
from tdxfl.keybroker.keystore import Keystore
from tdxfl.wiring.keybroker import run_keybroker

REPO = Path(__file__).resolve().parents[2]
ENV = {"KS_PASS": PASSPHRASE}


def broker_toml(tmp_path: Path, mode: str = "simulated") -> Path:
    from tdxfl.attestation.insecure_simulated import code_measurement

    me = code_measurement().hex()
    path = tmp_path / "broker.toml"
    path.write_text(
        f"""
[broker]
address = "127.0.0.1:{free_port()}"
enroll_address = "127.0.0.1:{free_port()}"
keystore = "state/keystore"
audit_log = "state/audit.jsonl"

[attestation]
mode = "{mode}"

[enroll]
ps = "ps"
worker-1 = "worker"

[policy]
tee = ["simulated"]
mrtd = ["{me}", "{GOOD.hex()}"]
"""
    )
    return path


def policy_file(tmp_path: Path) -> Path:
    p = tmp_path / "key-policy.toml"
    p.write_text(f'tee = ["simulated"]\nmrtd = ["{GOOD.hex()}"]\n')
    return p


def invoke(*args: str, env: dict[str, str] = ENV) -> Any:
    return CliRunner().invoke(keybroker, list(args), env=env)


def test_new_key_list_and_verify_audit(tmp_path: Path) -> None:
    cfg = broker_toml(tmp_path)
    r = invoke(
        "--config",
        str(cfg),
        "--passphrase-env",
        "KS_PASS",
        "new-key",
        "model",
        "--policy-file",
        str(policy_file(tmp_path)),
        "--roles",
        "ps,worker",
    )
    assert r.exit_code == 0, r.output
    assert "created key 'model' for roles ps, worker" in r.output
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "list", "--policies")
    assert r.exit_code == 0, r.output
    assert "model\troles=ps,worker\ttee=simulated" in r.output and GOOD.hex() in r.output
    key = Keystore.open(tmp_path / "state" / "keystore", passphrase=PASSPHRASE).get("model").key
    assert key.hex() not in r.output
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "set-policy", "model", "--roles", "ps")
    assert r.exit_code == 0 and "roles ps" in r.output
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "verify-audit")
    assert r.exit_code == 0 and "OK" in r.output and "0 entries" in r.output


def test_passphrase_never_from_argv_and_wrong_one_refused(tmp_path: Path) -> None:
    cfg = broker_toml(tmp_path)
    r = invoke("--config", str(cfg), "--passphrase", PASSPHRASE, "list")
    assert r.exit_code == 2 and "No such option" in r.output
    invoke(
        "--config",
        str(cfg),
        "--passphrase-env",
        "KS_PASS",
        "new-key",
        "model",
        "--policy-file",
        str(policy_file(tmp_path)),
    )
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "list", env={"KS_PASS": "wrong wrong"})
    assert r.exit_code == 5 and "wrong passphrase" in r.output  # WrongKey
    assert r.stderr.startswith("tdxfl keybroker list: cannot open keystore") and r.stderr.count("\n") == 1
    r = invoke("--config", str(cfg), "--passphrase-env", "MISSING_VAR", "list")
    assert r.exit_code == 2 and "MISSING_VAR" in r.output


def test_new_key_requires_a_policy(tmp_path: Path) -> None:
    r = invoke("--config", str(broker_toml(tmp_path)), "--passphrase-env", "KS_PASS", "new-key", "model")
    assert r.exit_code == 2 and "--policy-file is required" in r.output


def test_group_without_subcommand_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Path, str | None]] = []
    monkeypatch.setattr(
        "tdxfl.wiring.keybroker.run_keybroker",
        lambda path, passphrase=None, key_file=None: calls.append((path, passphrase)),
    )
    cfg = broker_toml(tmp_path)
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS")
    assert r.exit_code == 0, r.output
    r = invoke("--passphrase-env", "KS_PASS", "serve", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    assert calls == [(cfg, PASSPHRASE), (cfg, PASSPHRASE)]


def test_run_keybroker_serves_keys_and_audit_verifies(tmp_path: Path) -> None:
    cfg = broker_toml(tmp_path)
    ks = Keystore.create(tmp_path / "state" / "keystore", passphrase=PASSPHRASE, scrypt_n=1 << 14)
    ks.new_key("model", sim_policy(GOOD), ["ps"])
    config = load_broker_config(cfg)
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            run_keybroker(cfg, passphrase=PASSPHRASE, stop=stop)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        from tdxfl.attestation.decisions import DecisionLog
        from tdxfl.attestation.insecure_simulated import SimulatedVerifier, code_measurement
        from tdxfl.attestation.ratls import PeerVerifier

        verifier = PeerVerifier("ps", sim_policy(code_measurement()), [SimulatedVerifier()], DecisionLog())
        key = fetch_key(
            "ps",
            "ps",
            SimulatedAttester(SimulatedTd(mrtd=GOOD)),
            verifier,
            "model",
            config.address,
            config.enroll_address,
            retries=20,
            backoff_s=0.1,
        )
        assert key == ks.get("model").key
    finally:
        stop.set()
        thread.join(10)
    assert not errors and not thread.is_alive()
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "verify-audit")
    assert r.exit_code == 0 and "1 entries, hash chain and MACs intact" in r.output, r.output
    audit = tmp_path / "state" / "audit.jsonl"
    lines = audit.read_text().splitlines(keepends=True)
    audit.write_text(lines[0].replace('"ps"', '"px"', 1))
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "verify-audit")
    assert r.exit_code == 5 and "BROKEN" in r.output and "line 1" in r.output  # a tampered file: exit 5
    r = invoke("--config", str(cfg), "verify-audit", "--chain-only")
    assert r.exit_code == 5 and "line 1" in r.output


def test_example_broker_toml_parses(tmp_path: Path) -> None:
    text = (REPO / "examples" / "broker.toml").read_text()
    placeholder = "<96 hex digits: the MRTD of the tdxfl TD image>"
    assert placeholder in text
    cfg = tmp_path / "broker.toml"
    cfg.write_text(text.replace(placeholder, GOOD.hex()))
    config = load_broker_config(cfg)
    assert config.name == "keybroker" and config.enroll["worker-1"] == "worker"
    assert config.keystore == tmp_path / "broker" / "keystore" and config.attestation.mode == "tdx"
    assert config.policy.requires_real_tdx and config.policy.mrtd == frozenset({GOOD})


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"broker": {"address": "nowhere", "keystore": "k", "audit_log": "a"}}, "host:port"),
        ({"enroll": {}}, "[enroll]"),
        ({"policy": {"mrtdd": "any"}}, "unknown policy keys"),
        ({"surprise": {}}, "unknown top-level"),
        ({"attestation": {"mode": "sgx"}}, "attestation.mode"),
    ],
)
def test_broker_config_errors_are_clear(change: dict[str, Any], needle: str) -> None:
    doc: dict[str, Any] = {
        "broker": {"address": "127.0.0.1:1", "keystore": "k", "audit_log": "a"},
        "enroll": {"ps": "ps"},
        "policy": {"tee": ["tdx"], "mrtd": "any"},
        **change,
    }
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_broker_config(doc)


def test_serve_reports_missing_keystore(tmp_path: Path) -> None:
    cfg = broker_toml(tmp_path)
    r = invoke("--config", str(cfg), "--passphrase-env", "KS_PASS", "serve")
    assert r.exit_code == 5 and "no keystore" in r.output  # SealedFileError


def test_options_accepted_after_the_subcommand(tmp_path: Path) -> None:
    cfg = broker_toml(tmp_path)
    r = invoke(
        "new-key",
        "model",
        "--config",
        str(cfg),
        "--passphrase-env",
        "KS_PASS",
        "--policy-file",
        str(policy_file(tmp_path)),
    )
    assert r.exit_code == 0, r.output
    r = invoke("list", "--config", str(cfg), "--passphrase-env", "KS_PASS")
    assert r.exit_code == 0 and r.output.startswith("model\t"), r.output
