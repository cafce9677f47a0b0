"""``tdxfl attest`` and ``tdxfl verify-quote`` through click's CliRunner."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tdxfl.attestation.evidence import TAGGED_EVIDENCE_OID, Claims, TaggedEvidence, report_data_for
from tdxfl.attestation.insecure_simulated import SimulatedAttester
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import CLOCK_SKEW, TlsIdentity
from tdxfl.cli import main

REFUSED = 3  # the exit status of a refused (or unverifiable) quote: tdxfl.cli.exits


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def policy_file(tmp_path: Path, sample_mrtd: bytes) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(
        f'mrtd = ["{sample_mrtd.hex()}"]\nallow_dynamic_platform = true\nallow_cached_keys = true\nallow_smt = true\n'
    )
    return path


@pytest.fixture
def sim_policy(tmp_path: Path) -> Path:
    path = tmp_path / "sim.toml"
    path.write_text('[federation.peers]\ntee = ["simulated"]\nmrtd = "any"\n')
    return path


def verify_args(tdx_dir: Path, policy: Path, *extra: str) -> list[str]:
    return [
        "verify-quote",
        str(tdx_dir / "tdx_quote"),
        "--collateral",
        str(tdx_dir / "tdx_quote_collateral.json"),
        "--policy",
        str(policy),
        *extra,
    ]


def test_verify_quote_accepted_as_of(tdx_dir: Path, policy_file: Path, sample_time: int) -> None:
    result = run(*verify_args(tdx_dir, policy_file, "--as-of", str(sample_time)))
    assert result.exit_code == 0, result.output
    assert "tcb status:  UpToDate" in result.output
    assert result.output.rstrip().endswith("ACCEPTED")


def test_verify_quote_as_of_iso8601(tdx_dir: Path, policy_file: Path) -> None:
    result = run(*verify_args(tdx_dir, policy_file, "--as-of", "2025-07-19T10:00:34Z"))
    assert result.exit_code == 0, result.output
    assert run(*verify_args(tdx_dir, policy_file, "--as-of", "2025-07-19 10:00:34")).exit_code == 0


def test_verify_quote_refused_now(tdx_dir: Path, policy_file: Path) -> None:
    result = run(*verify_args(tdx_dir, policy_file))
    assert result.exit_code == REFUSED
    assert "REFUSED: " in result.output and "CrlExpired" in result.output


def test_verify_quote_json(tdx_dir: Path, policy_file: Path, sample_time: int, sample_mrtd: bytes) -> None:
    result = run(*verify_args(tdx_dir, policy_file, "--as-of", str(sample_time), "--json"))
    out = json.loads(result.output)
    assert result.exit_code == 0 and out["accepted"] is True and out["reasons"] == []
    assert out["evidence"]["report"]["mrtd"] == sample_mrtd.hex()
    assert out["evidence"]["platform"] == {"dynamic_platform": True, "cached_keys": True, "smt_enabled": True}


def test_verify_quote_default_policy_refuses_cloud_flags(tdx_dir: Path, sample_time: int) -> None:
    result = run(
        "verify-quote", str(tdx_dir / "tdx_quote"), "--collateral", str(tdx_dir / "tdx_quote_collateral.json"),
        "--as-of", str(sample_time), "--json",
    )  # fmt: skip
    out = json.loads(result.output)
    assert result.exit_code == REFUSED
    assert any("dynamic platform" in r for r in out["reasons"])


def test_verify_quote_sgx_refused(tdx_dir: Path, policy_file: Path, sample_time: int) -> None:
    result = run(
        "verify-quote", str(tdx_dir / "sgx_quote"), "--collateral", str(tdx_dir / "sgx_quote_collateral.json"),
        "--policy", str(policy_file), "--as-of", str(sample_time),
    )  # fmt: skip
    assert result.exit_code == REFUSED and "SGX, not TDX" in result.output


def test_verify_quote_needs_collateral(tdx_dir: Path, policy_file: Path) -> None:
    result = run("verify-quote", str(tdx_dir / "tdx_quote"), "--policy", str(policy_file))
    assert result.exit_code == REFUSED and "--collateral FILE or --pccs-url URL" in result.output


def test_verify_quote_bad_inputs(tdx_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("allow_debg = true\n")
    result = run(*verify_args(tdx_dir, bad))
    assert result.exit_code == 2 and "allow_debg" in result.output
    result = run(*verify_args(tdx_dir, tmp_path / "missing.toml"))
    assert result.exit_code == 2
    bad.write_text("mrtd = 'any'\n")
    result = run(*verify_args(tdx_dir, bad, "--as-of", "yesterday"))
    assert result.exit_code == 2 and "neither unix seconds nor ISO 8601" in result.output


def test_verify_simulated_certificate(tmp_path: Path, sim_policy: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(TlsIdentity.create(SimulatedAttester(), "alice").cert_pem)
    result = run("verify-quote", str(cert), "--policy", str(sim_policy), "--policy-table", "federation.peers")
    assert result.exit_code == 0, result.output
    assert "certificate (key binding and REPORTDATA checked)" in result.output
    # the default (real TDX) policy refuses simulated evidence
    result = run("verify-quote", str(cert))
    assert result.exit_code == REFUSED and "simulated evidence proves nothing" in result.output


def test_verify_certificate_der(tmp_path: Path, sim_policy: Path) -> None:
    identity = TlsIdentity.create(SimulatedAttester(), "bob")
    cert = tmp_path / "cert.der"
    cert.write_bytes(identity.certificate.public_bytes(serialization.Encoding.DER))
    result = run("verify-quote", str(cert), "--policy", str(sim_policy), "--policy-table", "federation.peers", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["evidence"]["tee"] == "simulated"


def _cert_with(evidence: TaggedEvidence, key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> Path:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(TAGGED_EVIDENCE_OID, evidence.encode()), critical=False)
        .sign(key, hashes.SHA384())
    )
    path = tmp_path / "forged.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_certificate_bound_to_another_key_refused(tmp_path: Path, sim_policy: Path) -> None:
    victim, mallory = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    claims = Claims.for_public_key(_spki(victim)).encode()
    quote = SimulatedAttester().quote(report_data_for(claims))
    path = _cert_with(TaggedEvidence(SimulatedAttester.evidence_tag, quote, claims), mallory, tmp_path)
    result = run("verify-quote", str(path), "--policy", str(sim_policy), "--policy-table", "federation.peers")
    assert result.exit_code == REFUSED and "bound to another key" in result.output


def test_certificate_report_data_mismatch_refused(tmp_path: Path, sim_policy: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    claims = Claims.for_public_key(_spki(key)).encode()
    quote = SimulatedAttester().quote(bytes(64))  # REPORTDATA does not commit to the claims
    path = _cert_with(TaggedEvidence(SimulatedAttester.evidence_tag, quote, claims), key, tmp_path)
    result = run("verify-quote", str(path), "--policy", str(sim_policy), "--policy-table", "federation.peers")
    assert result.exit_code == REFUSED and "REPORTDATA does not commit to the claims" in result.output


def test_certificate_outside_validity_refused(tmp_path: Path, sim_policy: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(TlsIdentity.create(SimulatedAttester(), "alice").cert_pem)
    result = run("verify-quote", str(cert), "--policy", str(sim_policy), "--policy-table", "federation.peers",
                 "--as-of", "2020-01-01T00:00:00Z")  # fmt: skip
    assert result.exit_code == REFUSED and "certificate not valid at 2020-01-01" in result.output


def test_certificate_validity_allows_the_handshake_clock_skew(tmp_path: Path, sim_policy: Path) -> None:
    """verify-quote judges validity exactly as the live handshake does: from CLOCK_SKEW before notBefore."""
    identity = TlsIdentity.create(SimulatedAttester(), "alice")
    cert = tmp_path / "cert.pem"
    cert.write_bytes(identity.cert_pem)
    start = identity.certificate.not_valid_before_utc
    for when, status in ((start - CLOCK_SKEW, 0), (start - CLOCK_SKEW - dt.timedelta(seconds=1), REFUSED)):
        result = run("verify-quote", str(cert), "--policy", str(sim_policy), "--policy-table", "federation.peers",
                     "--as-of", str(int(when.timestamp())))  # fmt: skip
        assert result.exit_code == status, result.output
    assert (
        f"certificate not valid at {start - CLOCK_SKEW - dt.timedelta(seconds=1):%Y-%m-%d %H:%M:%S} UTC"
        in result.output
    )


def _policy_from_output(output: str) -> Policy:
    return Policy.from_dict(tomllib.loads(output))


def test_attest_simulated_prints_pasteable_policy() -> None:
    result = run("attest", "--simulated")
    assert result.exit_code == 0, result.output
    policy = _policy_from_output(result.output)
    assert policy.tee == frozenset({"simulated"})
    assert policy.mrtd is not None and len(policy.mrtd) == 1
    assert policy.rtmr0 == frozenset({bytes(48)})


def test_attest_tdx_with_fake_configfs(fake_configfs: Any, monkeypatch: pytest.MonkeyPatch, sample_mrtd: bytes) -> None:
    from tdxfl.attestation.tdx import configfs

    cls = type(fake_configfs())

    class Attester(cls):  # type: ignore[misc, valid-type]
        def __init__(self, root: Any) -> None:
            super().__init__(root)
            self.created: list[Path] = []

    monkeypatch.setattr(configfs, "TdxAttester", Attester)
    result = run("attest", "--configfs", str(fake_configfs.root))
    assert result.exit_code == 0, result.output
    assert f"# mrtd               {sample_mrtd.hex()}" in result.output
    policy = _policy_from_output(result.output)
    assert policy.tee == frozenset({"tdx"}) and policy.mrtd == frozenset({sample_mrtd})
    assert policy.rtmr0 is not None and next(iter(policy.rtmr0)).hex().startswith("44c0197b39157fdd")
    assert not policy.allow_dynamic_platform


def test_attest_without_configfs(tmp_path: Path) -> None:
    result = run("attest", "--configfs", str(tmp_path / "absent"))
    assert result.exit_code == 3  # AttestationError: no evidence can be made here
    assert result.stderr.startswith(f"tdxfl attest: configfs-tsm report interface {tmp_path / 'absent'} not found")
    assert result.stderr.count("\n") == 1 and "mount -t configfs none /sys/kernel/config" in result.stderr
