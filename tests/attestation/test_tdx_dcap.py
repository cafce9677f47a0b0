"""DCAP verification of the real Intel-signed TDX sample, and refusals with clear reasons."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dcap_qvl
import pytest

from tdxfl.attestation.interfaces import PlatformFlags, VerifiedEvidence
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.report import TD_REPORT10_SIZE, TdAttribute, parse_quote
from tdxfl.attestation.tdx.collateral import FileCollateral, collateral_expiry
from tdxfl.attestation.tdx.dcap import TdxVerifier, platform_flags
from tdxfl.errors import AttestationError

SIG_DATA = 48 + TD_REPORT10_SIZE + 4  # where the signature data (ECDSA signature first) starts


class Fixed:
    """A collateral source serving one collateral object."""

    def __init__(self, collateral: dcap_qvl.QuoteCollateralV3) -> None:
        self.collateral = collateral

    def collateral_for(self, quote: bytes, now: int) -> dcap_qvl.QuoteCollateralV3:
        return self.collateral


@pytest.fixture
def verifier(tdx_collateral_path: Path, sample_time: int) -> TdxVerifier:
    return TdxVerifier(FileCollateral(tdx_collateral_path), as_of=sample_time)


@pytest.fixture
def verified(verifier: TdxVerifier, tdx_quote: bytes) -> VerifiedEvidence:
    return verifier.verify(tdx_quote)


def cloud_policy(mrtd: bytes, **overrides: object) -> Policy:
    """Policy for the sample: its MRTD, and the cloud platform flags allowed."""
    table: dict[str, object] = {
        "mrtd": [mrtd.hex()],
        "allow_dynamic_platform": True,
        "allow_cached_keys": True,
        "allow_smt": True,
        **overrides,
    }
    return Policy.from_dict(table)


def flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0x01
    return bytes(b)


def test_sample_verifies_up_to_date(verified: VerifiedEvidence, tdx_quote: bytes, sample_mrtd: bytes) -> None:
    assert verified.tee == "tdx"
    assert verified.tcb_status == "UpToDate"
    assert verified.advisory_ids == ()
    assert verified.report == parse_quote(tdx_quote).report
    assert verified.report.mrtd == sample_mrtd
    assert verified.report.td_attributes == int(TdAttribute.SEPT_VE_DISABLE)
    assert verified.platform == PlatformFlags(dynamic_platform=True, cached_keys=True, smt_enabled=True)


def test_policy_accepts_sample_when_cloud_flags_allowed(verified: VerifiedEvidence, sample_mrtd: bytes) -> None:
    assert cloud_policy(sample_mrtd).evaluate(verified) == []


@pytest.mark.parametrize(
    "flag,name",
    [("allow_dynamic_platform", "dynamic platform"), ("allow_cached_keys", "cached keys"), ("allow_smt", "SMT")],
)
def test_strict_platform_flags_refuse_sample(
    verified: VerifiedEvidence, sample_mrtd: bytes, flag: str, name: str
) -> None:
    reasons = cloud_policy(sample_mrtd, **{flag: False}).evaluate(verified)
    assert len(reasons) == 1
    assert name in reasons[0] and flag in reasons[0]


def test_strict_default_policy_names_every_flag(verified: VerifiedEvidence, sample_mrtd: bytes) -> None:
    reasons = " | ".join(Policy.from_dict({"mrtd": [sample_mrtd.hex()]}).evaluate(verified))
    for flag in ("allow_dynamic_platform", "allow_cached_keys", "allow_smt"):
        assert flag in reasons


def test_flipped_byte_in_signed_body_refused(verifier: TdxVerifier, tdx_quote: bytes) -> None:
    for offset in (48 + 136, 48 + 520):  # MRTD, REPORTDATA
        with pytest.raises(AttestationError, match="signature is invalid"):
            verifier.verify(flip(tdx_quote, offset))


def test_flipped_byte_in_signature_refused(verifier: TdxVerifier, tdx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="refused by DCAP verification.*signature is invalid"):
        verifier.verify(flip(tdx_quote, SIG_DATA + 10))


def test_flipped_byte_in_collateral_refused(tdx_collateral_path: Path, tdx_quote: bytes, sample_time: int) -> None:
    data = json.loads(tdx_collateral_path.read_text())
    tcb_info = data["tcb_info"]
    i = tcb_info.index('"issueDate":"2025-06-19T10:16:03Z"') + len('"issueDate":"2025-06-19T10:16:0')
    data["tcb_info"] = tcb_info[:i] + "4" + tcb_info[i + 1 :]  # one byte of the signed TCB info
    collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(data))
    with pytest.raises(AttestationError, match="Signature is invalid for tcb_info"):
        TdxVerifier(Fixed(collateral), as_of=sample_time).verify(tdx_quote)


def test_mrtd_not_in_policy_refused(verified: VerifiedEvidence) -> None:
    reasons = cloud_policy(bytes(48)).evaluate(verified)
    assert len(reasons) == 1 and reasons[0].startswith("MRTD 91eb2b44d141") and "not allowed" in reasons[0]


def test_debug_td_refused(verified: VerifiedEvidence, sample_mrtd: bytes) -> None:
    debug_report = dataclasses.replace(verified.report, td_attributes=verified.report.td_attributes | TdAttribute.DEBUG)
    debug = dataclasses.replace(verified, report=debug_report)
    reasons = cloud_policy(sample_mrtd).evaluate(debug)
    assert len(reasons) == 1 and "DEBUG" in reasons[0]
    assert cloud_policy(sample_mrtd, allow_debug=True).evaluate(debug) == []


def test_tcb_status_not_accepted(verified: VerifiedEvidence, sample_mrtd: bytes) -> None:
    reasons = cloud_policy(sample_mrtd, tcb_statuses=["SWHardeningNeeded"]).evaluate(verified)
    assert reasons == ["TCB status 'UpToDate' is not accepted (policy accepts ['SWHardeningNeeded'])"]


def test_sgx_quote_refused_as_not_tdx(tdx_dir: Path, sgx_quote: bytes, sample_time: int) -> None:
    verifier = TdxVerifier(FileCollateral(tdx_dir / "sgx_quote_collateral.json"), as_of=sample_time)
    with pytest.raises(AttestationError, match=r"not a valid TDX quote: .*SGX, not TDX"):
        verifier.verify(sgx_quote)


def test_expired_collateral_refused_at_real_clock(tdx_collateral_path: Path, tdx_quote: bytes) -> None:
    verifier = TdxVerifier(FileCollateral(tdx_collateral_path))
    with pytest.raises(AttestationError, match="Expired.*collateral expired"):
        verifier.verify(tdx_quote)


def test_verification_before_collateral_validity_refused(tdx_collateral_path: Path, tdx_quote: bytes) -> None:
    verifier = TdxVerifier(FileCollateral(tdx_collateral_path), as_of=1700000000)  # Nov 2023
    with pytest.raises(AttestationError, match="refused by DCAP verification at 2023-11-14") as err:
        verifier.verify(tdx_quote)
    assert "collateral expired" not in str(err.value)  # not yet valid is not expired


def test_expiry_hint_comes_from_the_collateral_dates(tdx_collateral_path: Path, tdx_quote: bytes) -> None:
    """At its first nextUpdate the collateral has expired, whatever words dcap-qvl uses for it."""
    source = FileCollateral(tdx_collateral_path)
    expiry = collateral_expiry(source.collateral_for(tdx_quote, 0))
    TdxVerifier(source, as_of=expiry - 1).verify(tdx_quote)
    with pytest.raises(AttestationError, match=r"refused by DCAP verification at .*\(collateral expired: fetch fresh"):
        TdxVerifier(source, as_of=expiry).verify(tdx_quote)


def test_no_expiry_hint_for_valid_collateral(verifier: TdxVerifier, tdx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="refused by DCAP verification") as err:
        verifier.verify(flip(tdx_quote, SIG_DATA + 10))  # refused while the collateral is valid
    assert "collateral expired" not in str(err.value)


def test_truncated_quote_refused(verifier: TdxVerifier, tdx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="not a valid TDX quote: quote truncated"):
        verifier.verify(tdx_quote[:1000])


def test_as_of_accepts_datetime(tdx_collateral_path: Path, tdx_quote: bytes, sample_time: int) -> None:
    import datetime as dt

    when = dt.datetime.fromtimestamp(sample_time, dt.UTC)
    assert TdxVerifier(FileCollateral(tdx_collateral_path), as_of=when).verify(tdx_quote).tcb_status == "UpToDate"


def test_platform_flags_parsing() -> None:
    claims = {"platform": {"pck": {"dynamic_platform": "False", "cached_keys": "True", "smt_enabled": "Undefined"}}}
    assert platform_flags(claims) == PlatformFlags(dynamic_platform=False, cached_keys=True, smt_enabled=True)
    assert platform_flags({}) == PlatformFlags(True, True, True)  # unknown counts as set


def test_dcap_strict_policy_would_refuse_but_ours_reports(
    tdx_collateral_path: Path, tdx_quote: bytes, sample_time: int
) -> None:
    """dcap-qvl's strict policy refuses the sample for its flags; TdxVerifier leaves that to Policy."""
    collateral = dcap_qvl.QuoteCollateralV3.from_json(tdx_collateral_path.read_text())
    with pytest.raises(ValueError, match="Dynamic platform is not allowed"):
        dcap_qvl.QuoteVerifier().verify_with_policy(
            tdx_quote, collateral, sample_time, dcap_qvl.QuotePolicy.strict(sample_time)
        )
    assert TdxVerifier(Fixed(collateral), as_of=sample_time).verify(tdx_quote).platform.dynamic_platform


def test_failing_collateral_source_is_a_refusal(tdx_quote: bytes, sample_time: int) -> None:
    class Broken:
        def collateral_for(self, quote: bytes, now: int) -> dcap_qvl.QuoteCollateralV3:
            raise RuntimeError("PCCS down")

    with pytest.raises(AttestationError, match="no DCAP collateral for the quote: PCCS down"):
        TdxVerifier(Broken(), as_of=sample_time).verify(tdx_quote)


def test_verifier_identity(verifier: TdxVerifier) -> None:
    from tdxfl.attestation.evidence import TDX_EVIDENCE_TAG

    assert (verifier.tee, verifier.evidence_tag) == ("tdx", TDX_EVIDENCE_TAG)
