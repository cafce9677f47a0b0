"""Known-answer vectors for the RA-TLS evidence extension (``attestation/evidence.py``).

The evidence extension is a wire format shared with other implementations (Intel's TDX/SGX
TLS libraries): X.509 extension 2.23.133.5.4.9, non-critical, holding CBOR tag 60000 (TDX quote)
or tdxfl's simulated tag 1953327206 over ``[quote, claims]``, where ``claims`` is the canonical
CBOR map ``{"nonce": bstr?, "pubkey-hash": bstr(cbor([7, SHA-384(SPKI)]))}`` and REPORTDATA is
SHA-384(claims) followed by 16 zero bytes (README "Evidence format"). Parties of different
tdxfl versions must keep understanding each other's certificates, so these tests pin it to
certificates committed once by ``tests/data/kat/make_vectors.py`` (one fixed P-384 key,
deterministic ECDSA):

* ``ratls-tdx.der`` carries the real Intel sample quote (``tests/data/tdx/tdx_quote``) and claims
  with a nonce. Its REPORTDATA was fixed when Intel's hardware signed it, so it cannot commit to
  our claims: the test pins that the quote is carried byte for byte, is routed to the DCAP
  verifier and verifies as genuine, and that the binding check then refuses it (a grafted quote);
* ``ratls-simulated.der`` (claims without a nonce) and ``evidence-simulated.cbor`` (fresh
  evidence for a nonce, the ``AttestReply.evidence`` bytes) carry simulated quotes whose
  REPORTDATA does bind the claims.

The expected bytes are spelled out here (tag numbers, OID, CBOR heads) rather than taken from
tdxfl's constants. Encoding is pinned too: CBOR here is deterministic (definite lengths, minimal
heads, canonical map order; Ed25519 signatures are deterministic), so building the evidence
from the same quote, key and nonce must give exactly the committed extension bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography import x509

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.evidence import Claims, TaggedEvidence, report_data_for, report_data_matches
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier
from tdxfl.attestation.interfaces import AttestationError, Attester
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import (
    PeerVerifier,
    certificate_evidence,
    certificate_spki,
    load_certificate,
    make_evidence,
)
from tdxfl.attestation.report import parse_quote
from tdxfl.attestation.tdx.collateral import FileCollateral
from tdxfl.attestation.tdx.dcap import TdxVerifier

REPO = Path(__file__).resolve().parents[2]
KAT = REPO / "tests" / "data" / "kat"
TDX_DIR = Path(os.environ.get("TDXFL_TESTDATA", REPO / "tests" / "data")) / "tdx"
TDX_CERT = KAT / "ratls-tdx.der"
SIM_CERT = KAT / "ratls-simulated.der"
SIM_FRESH = KAT / "evidence-simulated.cbor"

OID = "2.23.133.5.4.9"
TDX_TAG = 60000
SIM_TAG = 1953327206
SAMPLE_QUOTE_SHA256 = "c42f9164325024bca2757bc8819b11879a0a369132ea4e2b7c85df4805ea72db"
SAMPLE_REPORT_DATA = bytes.fromhex(
    "9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
    "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20"
)
SAMPLE_TIME = 1752919234  # 2025-07-19 10:00:34 UTC: the sample's collateral is valid then
#: SHA-384 of the committed certificates' SubjectPublicKeyInfo (one P-384 key for all vectors)
SPKI_SHA384 = bytes.fromhex(
    "d81716e78f521dfe62d28f7cb6f17a927c28d818ac26d71aaab9bf21cf0a2b6acd43d095a8c0de2a31b1920fa9ff0103"
)
TDX_NONCE = bytes(range(0xF0, 0x100)) * 2
SIM_NONCE = bytes.fromhex("c0ffee00") * 8
SIM_TD = SimulatedTd(
    mrtd=bytes(range(48)),
    rtmrs=(bytes([0x10]) * 48, bytes([0x11]) * 48, bytes([0x12]) * 48, bytes([0x13]) * 48),
    mrconfigid=bytes([0x20]) * 48,
    mrowner=bytes([0x30]) * 48,
    debug=False,
)

# The claims, spelled out in CBOR: map(1 or 2), "nonce" -> bstr(32) first (canonical order:
# shorter key first), "pubkey-hash" -> bstr(52) holding [7, bstr(48) SHA-384(SPKI)].
_PUBKEY_HASH = b"\x6bpubkey-hash" + b"\x58\x34" + b"\x82\x07\x58\x30" + SPKI_SHA384
CLAIMS_NO_NONCE = b"\xa1" + _PUBKEY_HASH
CLAIMS_TDX = b"\xa2" + b"\x65nonce" + b"\x58\x20" + TDX_NONCE + _PUBKEY_HASH
CLAIMS_SIM_FRESH = b"\xa2" + b"\x65nonce" + b"\x58\x20" + SIM_NONCE + _PUBKEY_HASH

DIGESTS = {
    TDX_CERT: "933d5d7f60cdf04364f41833bebae467f5bf855133381270b8fc97e6d0bb3253",
    SIM_CERT: "c572f0b2f4f322dc771c12a68702c07c2184ea27fdabb5d7e31e87d6240f1141",
    SIM_FRESH: "9c9858b00a5614148e3077adb7d80ddf301b77ef610404d129e0288f37a52ddd",
}


def _extension_value(path: Path) -> bytes:
    """The raw evidence extension of a committed certificate, found by the literal OID."""
    cert = x509.load_der_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID))
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return ext.value.value


def _spki(path: Path) -> bytes:
    return certificate_spki(load_certificate(path.read_bytes()))


def _sample_quote() -> bytes:
    return (TDX_DIR / "tdx_quote").read_bytes()


def _envelope(tag_head: bytes, quote: bytes, claims: bytes) -> bytes:
    """tag(n, [bstr quote, bstr claims]) with the quote and claims lengths as 2- and 1-byte heads."""
    assert len(quote) < 1 << 16 and 24 <= len(claims) < 256
    quote_head = b"\x59" + len(quote).to_bytes(2, "big")
    return tag_head + b"\x82" + quote_head + quote + b"\x58" + bytes([len(claims)]) + claims


class SampleQuoteAttester(Attester):
    """Returns the Intel sample quote; remembers the REPORTDATA it was asked to bind."""

    tee = "tdx"
    evidence_tag = TDX_TAG

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def quote(self, report_data: bytes) -> bytes:
        self.asked.append(report_data)
        return _sample_quote()


@pytest.mark.parametrize("path", list(DIGESTS), ids=lambda p: p.name)
def test_committed_vectors_are_unchanged(path: Path) -> None:
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGESTS[path]


def test_certificates_are_bound_to_the_known_key() -> None:
    for path in (TDX_CERT, SIM_CERT):
        assert hashlib.sha384(_spki(path)).digest() == SPKI_SHA384


# -- TDX: the real Intel sample quote ----------------------------------------------------------
def test_tdx_extension_is_the_documented_bytes() -> None:
    quote = _sample_quote()
    assert hashlib.sha256(quote).hexdigest() == SAMPLE_QUOTE_SHA256
    assert _extension_value(TDX_CERT) == _envelope(b"\xd9\xea\x60", quote, CLAIMS_TDX)  # tag 60000


def test_tdx_extension_decodes_to_the_quote_and_claims() -> None:
    evidence = certificate_evidence(load_certificate(TDX_CERT.read_bytes()))
    assert (evidence.tag, evidence.quote, evidence.claims) == (TDX_TAG, _sample_quote(), CLAIMS_TDX)
    claims = evidence.parsed_claims()
    assert (claims.pubkey_hash_alg, claims.pubkey_hash, claims.nonce) == (7, SPKI_SHA384, TDX_NONCE)
    assert claims.matches_public_key(_spki(TDX_CERT))
    # Intel signed this REPORTDATA long ago: it commits to other claims than ours
    assert parse_quote(evidence.quote).report.report_data == SAMPLE_REPORT_DATA
    assert not report_data_matches(SAMPLE_REPORT_DATA, evidence.claims)


def test_tdx_evidence_is_verified_genuine_and_then_refused_as_unbound() -> None:
    verifier = TdxVerifier(FileCollateral(TDX_DIR / "tdx_quote_collateral.json"), as_of=SAMPLE_TIME)
    peer = PeerVerifier("kat", Policy(), [verifier], DecisionLog())
    evidence = certificate_evidence(load_certificate(TDX_CERT.read_bytes()))
    with pytest.raises(AttestationError, match="REPORTDATA does not commit to the claims"):
        peer.verify_genuine(evidence, _spki(TDX_CERT), TDX_NONCE)


def test_tdx_extension_encodes_to_the_committed_bytes() -> None:
    spki = _spki(TDX_CERT)
    assert Claims.for_public_key(spki, TDX_NONCE).encode() == CLAIMS_TDX
    assert TaggedEvidence(TDX_TAG, _sample_quote(), CLAIMS_TDX).encode() == _extension_value(TDX_CERT)
    attester = SampleQuoteAttester()
    assert make_evidence(attester, spki, TDX_NONCE).encode() == _extension_value(TDX_CERT)
    assert attester.asked == [hashlib.sha384(CLAIMS_TDX).digest() + bytes(16)]


# -- simulated evidence -----------------------------------------------------------------------
SIM_VECTORS = {"certificate": (CLAIMS_NO_NONCE, None), "fresh": (CLAIMS_SIM_FRESH, SIM_NONCE)}


@pytest.mark.parametrize("source", list(SIM_VECTORS))
def test_simulated_evidence_decodes_and_binds(source: str) -> None:
    claims, nonce = SIM_VECTORS[source]
    data = _extension_value(SIM_CERT) if source == "certificate" else SIM_FRESH.read_bytes()
    assert data.startswith(b"\xda\x74\x6d\x68\x66\x82\x59\x02\xbc")  # tag 1953327206, [bstr(700) ...
    evidence = TaggedEvidence.decode(data)
    assert data == _envelope(b"\xda\x74\x6d\x68\x66", evidence.quote, claims)
    assert (evidence.tag, evidence.claims) == (SIM_TAG, claims)
    parsed = evidence.parsed_claims()
    assert (parsed.pubkey_hash_alg, parsed.pubkey_hash, parsed.nonce) == (7, SPKI_SHA384, nonce)
    report = parse_quote(evidence.quote).report
    assert report.report_data == hashlib.sha384(claims).digest() + bytes(16)
    assert report_data_matches(report.report_data, evidence.claims)
    assert (report.mrtd, report.rtmrs, report.mrconfigid, report.mrowner, report.debug) == (
        SIM_TD.mrtd,
        SIM_TD.rtmrs,
        SIM_TD.mrconfigid,
        SIM_TD.mrowner,
        False,
    )
    SimulatedVerifier().verify(evidence.quote)  # signed by the public simulation key
    simulated_ok = Policy(tee=frozenset({"simulated"}), mrtd=None)
    accepting = PeerVerifier("kat", simulated_ok, [SimulatedVerifier()], DecisionLog())
    assert accepting.verify_genuine(evidence, _spki(SIM_CERT), nonce).report.mrtd == SIM_TD.mrtd
    strict = PeerVerifier("kat", Policy(), [SimulatedVerifier()], DecisionLog())
    with pytest.raises(AttestationError, match="simulated"):
        strict.verify_genuine(evidence, _spki(SIM_CERT), nonce)


def test_simulated_evidence_encodes_to_the_committed_bytes() -> None:
    spki = _spki(SIM_CERT)
    attester = SimulatedAttester(SIM_TD)
    assert make_evidence(attester, spki, None).encode() == _extension_value(SIM_CERT)
    assert make_evidence(attester, spki, SIM_NONCE).encode() == SIM_FRESH.read_bytes()
    assert report_data_for(CLAIMS_SIM_FRESH) == hashlib.sha384(CLAIMS_SIM_FRESH).digest() + bytes(16)
