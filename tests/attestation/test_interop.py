"""Interoperability: RA-TLS certificates made by Intel's SGX SDK and by rats-tls decode in tdxfl,
their evidence binds their key exactly as ours does, and a TDX policy refuses them as SGX."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.evidence import TDX_EVIDENCE_TAG, report_data_matches
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier, certificate_evidence, certificate_spki, load_certificate
from tdxfl.attestation.tdx.collateral import FileCollateral
from tdxfl.attestation.tdx.dcap import TdxVerifier

INTEROP = Path(__file__).resolve().parents[1] / "data" / "interop"
SGX_REPORT_DATA = slice(48 + 320, 48 + 384)  # SGX quote v3: header, then the report body


@pytest.mark.parametrize("name", ["intel-sgxsdk-cert.pem", "rats-tls-cert.pem"])
def test_foreign_certificates_decode_and_bind_their_key(name: str) -> None:
    cert = load_certificate((INTEROP / name).read_bytes())
    evidence = certificate_evidence(cert)
    assert evidence.tag == TDX_EVIDENCE_TAG  # 60000: Intel TEE quote, SGX and TDX alike
    version, _, tee_type = struct.unpack_from("<HHI", evidence.quote, 0)
    assert (version, tee_type) == (3, 0)  # an SGX quote
    claims = evidence.parsed_claims()
    assert claims.matches_public_key(certificate_spki(cert))
    assert report_data_matches(evidence.quote[SGX_REPORT_DATA], evidence.claims)


@pytest.mark.parametrize("name", ["intel-sgxsdk-cert.pem", "rats-tls-cert.pem"])
def test_foreign_sgx_evidence_refused_by_tdx_policy(name: str, tdx_collateral_path: Path) -> None:
    verifier = PeerVerifier(
        "ps", Policy.from_dict({"mrtd": "any"}), [TdxVerifier(FileCollateral(tdx_collateral_path))], DecisionLog()
    )
    cert = load_certificate((INTEROP / name).read_bytes())
    genuine_binding = certificate_evidence(cert)
    assert genuine_binding.parsed_claims().matches_public_key(certificate_spki(cert))
    decision = verifier.appraise("peer", certificate=cert).decision
    assert not decision.accepted
    assert "SGX" in decision.reason or "certificate not valid at" in decision.reason
