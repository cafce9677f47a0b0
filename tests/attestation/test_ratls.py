"""RA-TLS certificates and peer appraisal: each attack is refused with a clear reason."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.evidence import TAGGED_EVIDENCE_OID, TaggedEvidence
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import (
    CLOCK_SKEW,
    PeerVerifier,
    TlsIdentity,
    certificate_evidence,
    certificate_fingerprint,
    check_certificate_validity,
    make_evidence,
)
from tdxfl.errors import AttestationError, AttestationRefused, ConfigError

MRTD = bytes.fromhex("11" * 48)
OTHER = bytes.fromhex("22" * 48)


def verifier(*, at: dt.datetime | None = None, **policy: object) -> PeerVerifier:
    """A verifier for simulated TDs with MRTD (and ``policy``), whose clock says ``at`` if given."""
    table = {"tee": ["simulated"], "mrtd": [MRTD.hex()], **policy}
    if at is None:
        return PeerVerifier("ps", Policy.from_dict(table), [SimulatedVerifier()], DecisionLog())
    return PeerVerifier("ps", Policy.from_dict(table), [SimulatedVerifier()], DecisionLog(), now=lambda: at)


def identity(td: SimulatedTd | None = None, nonce: bytes | None = None) -> TlsIdentity:
    return TlsIdentity.create(SimulatedAttester(td or SimulatedTd(mrtd=MRTD)), "worker-1", nonce=nonce)


def test_certificate_with_bound_evidence_is_accepted_and_logged() -> None:
    v = verifier()
    a = v.appraise("worker-1", certificate=identity().cert_pem)
    assert a.decision.accepted, a.decision.reason
    assert a.evidence is not None and a.evidence.report.mrtd == MRTD
    assert v.decisions.decisions == [a.decision]
    assert a.decision.mrtd == MRTD.hex() and a.decision.tee == "simulated"


def test_certificate_is_short_lived_p384_with_noncritical_evidence() -> None:
    cert = identity().certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=13)
    ext = cert.extensions.get_extension_for_oid(TAGGED_EVIDENCE_OID)
    assert not ext.critical


def test_certificate_without_evidence_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "plain")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA384())
    )
    d = verifier().appraise("w", certificate=cert).decision
    assert not d.accepted and "no attestation evidence" in d.reason


def test_evidence_grafted_onto_another_key_is_refused() -> None:
    """The cczoo flaw: a genuine quote whose REPORTDATA does not bind the TLS key."""
    victim = identity()
    attacker_key = ec.generate_private_key(ec.SECP384R1())
    ev = certificate_evidence(victim.certificate)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "attacker")])
    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(attacker_key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(TAGGED_EVIDENCE_OID, ev.encode()), critical=False)
        .sign(attacker_key, hashes.SHA384())
    )
    d = verifier().appraise("w", certificate=forged).decision
    assert not d.accepted and "bound to another key" in d.reason


def test_claims_swapped_under_a_quote_are_refused() -> None:
    """Claims rewritten for the attacker's key no longer match the quote's REPORTDATA."""
    victim = identity()
    attacker = identity()
    real = certificate_evidence(victim.certificate)
    attacker_claims = certificate_evidence(attacker.certificate).claims
    forged = TaggedEvidence(real.tag, real.quote, attacker_claims)
    d = verifier().appraise("w", certificate=attacker.cert_pem, evidence=forged.encode()).decision
    assert not d.accepted and "REPORTDATA" in d.reason


def test_measurement_not_in_policy_is_refused_naming_both_values() -> None:
    d = verifier().appraise("w", certificate=identity(SimulatedTd(mrtd=OTHER)).cert_pem).decision
    assert not d.accepted
    assert "MRTD" in d.reason and OTHER.hex()[:12] in d.reason and MRTD.hex()[:12] in d.reason


def test_rtmr_pinned_by_policy() -> None:
    td = SimulatedTd(mrtd=MRTD, rtmrs=(bytes(48), bytes(48), bytes(48), OTHER))
    d = verifier(rtmr3=[MRTD.hex()]).appraise("w", certificate=identity(td).cert_pem).decision
    assert not d.accepted and "RTMR3" in d.reason


def test_debug_td_is_refused() -> None:
    d = verifier().appraise("w", certificate=identity(SimulatedTd(mrtd=MRTD, debug=True)).cert_pem).decision
    assert not d.accepted and "DEBUG" in d.reason


def test_simulated_evidence_refused_by_tdx_policy() -> None:
    v = PeerVerifier("ps", Policy.from_dict({"mrtd": "any"}), [SimulatedVerifier()], DecisionLog())
    d = v.appraise("w", certificate=identity().cert_pem).decision
    assert not d.accepted and "simulated" in d.reason and "tdx" in d.reason


def test_corrupted_quote_is_refused() -> None:
    ident = identity()
    ev = certificate_evidence(ident.certificate)
    bad = bytearray(ev.quote)
    bad[200] ^= 1
    d = (
        verifier()
        .appraise("w", certificate=ident.cert_pem, evidence=TaggedEvidence(ev.tag, bytes(bad), ev.claims).encode())
        .decision
    )
    assert not d.accepted and "signature invalid" in d.reason


def test_fresh_evidence_must_answer_our_nonce() -> None:
    attester = SimulatedAttester(SimulatedTd(mrtd=MRTD))
    ident = TlsIdentity.create(attester, "ps")
    nonce, other = b"n" * 32, b"m" * 32
    v = verifier()
    ok = v.appraise("ps", certificate=ident.cert_pem, evidence=ident.fresh_evidence(attester, nonce), nonce=nonce)
    assert ok.decision.accepted, ok.decision.reason
    replayed = v.appraise("ps", certificate=ident.cert_pem, evidence=ident.fresh_evidence(attester, other), nonce=nonce)
    assert not replayed.decision.accepted and "nonce" in replayed.decision.reason


def test_expired_certificate_is_refused() -> None:
    ident = TlsIdentity.create(SimulatedAttester(SimulatedTd(mrtd=MRTD)), "w", validity=dt.timedelta(seconds=1))
    expiry = ident.certificate.not_valid_after_utc
    assert verifier(at=expiry).appraise("w", certificate=ident.cert_pem).decision.accepted
    d = verifier(at=expiry + dt.timedelta(seconds=1)).appraise("w", certificate=ident.cert_pem).decision
    assert not d.accepted and d.reason.startswith("certificate not valid at ")


def test_certificate_from_a_clock_running_ahead_is_accepted_within_the_skew() -> None:
    ident = identity()
    start = ident.certificate.not_valid_before_utc
    assert verifier(at=start - CLOCK_SKEW).appraise("w", certificate=ident.cert_pem).decision.accepted
    d = verifier(at=start - CLOCK_SKEW - dt.timedelta(seconds=1)).appraise("w", certificate=ident.cert_pem).decision
    assert not d.accepted and "not valid at" in d.reason


def test_default_clock_is_the_current_time() -> None:
    assert verifier().appraise("w", certificate=identity().cert_pem).decision.accepted
    # valid only at its creation time minus the skew, which the real clock has passed
    past = TlsIdentity.create(SimulatedAttester(SimulatedTd(mrtd=MRTD)), "w", validity=-CLOCK_SKEW)
    assert "certificate not valid at" in verifier().appraise("w", certificate=past.cert_pem).decision.reason


def test_validity_check_names_the_time_and_the_window() -> None:
    cert = identity().certificate
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    check_certificate_validity(cert, start)
    check_certificate_validity(cert, end)
    check_certificate_validity(cert, start - dt.timedelta(minutes=1), skew=dt.timedelta(minutes=1))
    with pytest.raises(AttestationError) as err:
        check_certificate_validity(cert, start - dt.timedelta(seconds=1), skew=dt.timedelta(0))
    assert not isinstance(err.value, AttestationRefused)
    when = start - dt.timedelta(seconds=1)
    assert str(err.value) == (
        f"certificate not valid at {when:%Y-%m-%d %H:%M:%S} UTC "
        f"(valid {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC)"
    )
    other_zone = (end + dt.timedelta(hours=1)).astimezone(dt.timezone(dt.timedelta(hours=2)))
    with pytest.raises(AttestationError, match=f"not valid at {end + dt.timedelta(hours=1):%Y-%m-%d %H:%M:%S} UTC"):
        check_certificate_validity(cert, other_zone)


def test_certificate_fingerprint_is_sha256_of_der() -> None:
    cert = identity().certificate
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    assert certificate_fingerprint(cert.public_bytes(serialization.Encoding.PEM)) == expected
    assert certificate_fingerprint(der) == expected
    with pytest.raises(AttestationError, match="not an X.509 certificate"):
        certificate_fingerprint(b"garbage")


def test_refusals_by_policy_are_attestation_refused() -> None:
    v = verifier()
    genuine = v.verify_certificate(identity(SimulatedTd(mrtd=OTHER)).cert_pem)
    with pytest.raises(AttestationRefused, match="MRTD"):
        v.check_policy(genuine)
    tdx_only = PeerVerifier("ps", Policy.from_dict({"mrtd": "any"}), [SimulatedVerifier()], DecisionLog())
    with pytest.raises(AttestationRefused, match="simulated evidence proves nothing"):
        tdx_only.verify_certificate(identity().cert_pem)
    ident = identity()
    ev = certificate_evidence(ident.certificate)
    bad = bytearray(ev.quote)
    bad[200] ^= 1
    with pytest.raises(AttestationError, match="signature invalid") as err:
        v.verify_certificate(ident.cert_pem, evidence=TaggedEvidence(ev.tag, bytes(bad), ev.claims).encode())
    assert not isinstance(err.value, AttestationRefused)


def test_private_key_never_in_certificate_or_decisions() -> None:
    ident = identity()
    key_pem = ident.private_key_pem()
    v = verifier()
    d = v.appraise("w", certificate=ident.cert_pem).decision
    body = key_pem.split(b"-----")[2].strip()[:40]
    assert body not in ident.cert_pem and body.decode() not in repr(d)


@pytest.mark.parametrize(
    "table,needle", [({"mrtd": ["zz"]}, "not hex"), ({"tee": ["sgx"]}, "tee"), ({"mrtdd": "any"}, "unknown")]
)
def test_malformed_policy_is_an_error(table: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Policy.from_dict(table)


def test_make_evidence_binds_nonce() -> None:
    attester = SimulatedAttester(SimulatedTd(mrtd=MRTD))
    ev = make_evidence(attester, b"spki", b"nonce-123456789012")
    assert ev.parsed_claims().nonce == b"nonce-123456789012"
