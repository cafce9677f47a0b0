"""RA-TLS: in-memory TLS identities whose certificates carry evidence bound to their key.

``TlsIdentity.create`` makes an ECDSA P-384 key in memory, asks the attester for evidence
whose REPORTDATA commits to the key's SubjectPublicKeyInfo (and a verifier's nonce, the task
code's digest and the attester's RTMR3 event log), and wraps both in a short-lived self-signed
certificate. ``PeerVerifier`` checks such certificates (or fresh evidence for a known key) against
a policy, at the time of its clock, replays any RTMR3 event log, and records every decision.
Nothing here writes to disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tdxfl.attestation.decisions import Decision, DecisionLog
from tdxfl.attestation.eventlog import check_rtmr3_log
from tdxfl.attestation.evidence import (
    SIMULATED_EVIDENCE_TAG,
    TAGGED_EVIDENCE_OID,
    TDX_EVIDENCE_TAG,
    Claims,
    TaggedEvidence,
    report_data_for,
    report_data_matches,
)
from tdxfl.attestation.interfaces import Attester, VerifiedEvidence, Verifier
from tdxfl.attestation.policy import Policy
from tdxfl.errors import AttestationError, AttestationRefused

DEFAULT_VALIDITY = dt.timedelta(hours=12)
#: how far a peer's clock may run ahead of ours: certificates are made valid from this long before
#: their creation, and accepted from this long before their notBefore
CLOCK_SKEW = dt.timedelta(minutes=5)


def utc_now() -> dt.datetime:
    """The current time, timezone-aware in UTC (the default clock of ``PeerVerifier``)."""
    return dt.datetime.now(dt.UTC)


def make_evidence(
    attester: Attester, spki_der: bytes, nonce: bytes | None = None, task_digest: bytes | None = None
) -> TaggedEvidence:
    """Evidence from ``attester`` bound to ``spki_der`` (and ``nonce``, ``task_digest``, and the
    attester's RTMR3 event log when it keeps one)."""
    claims = Claims.for_public_key(spki_der, nonce, task=task_digest, rtmr3_log=attester.rtmr3_log).encode()
    quote = attester.quote(report_data_for(claims))
    return TaggedEvidence(tag=attester.evidence_tag, quote=quote, claims=claims)


def tls_name(party: str) -> str:
    """The DNS name in a party's certificate (used with grpc's target-name override)."""
    safe = "".join(c if c.isalnum() or c == "-" else "-" for c in party.lower())
    return f"{safe}.tdxfl.invalid"


class TlsIdentity:
    """A party's TLS key and RA-TLS certificate, held in memory only; ``task_digest`` is the task
    code digest its evidence claims (None: none)."""

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        task_digest: bytes | None = None,
    ) -> None:
        self._private_key = private_key
        self.certificate = certificate
        self.task_digest = task_digest

    @classmethod
    def create(
        cls,
        attester: Attester,
        party: str,
        *,
        nonce: bytes | None = None,
        task_digest: bytes | None = None,
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> TlsIdentity:
        """Generate a fresh P-384 key and a self-signed certificate carrying bound evidence; the
        evidence (and all ``fresh_evidence`` for it) claims ``task_digest`` when given."""
        key = ec.generate_private_key(ec.SECP384R1())
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        evidence = make_evidence(attester, spki, nonce, task_digest)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tls_name(party))])
        now = utc_now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(tls_name(party))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(TAGGED_EVIDENCE_OID, evidence.encode()), critical=False)
            .sign(key, hashes.SHA384())
        )
        return cls(key, cert, task_digest)

    @property
    def cert_pem(self) -> bytes:
        """The certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def spki_der(self) -> bytes:
        """The DER SubjectPublicKeyInfo the evidence is bound to."""
        return self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_key_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM *in memory*, the only form grpc accepts.

        Callers hand it straight to grpc credentials (or ``tls13_context``); it must never be
        logged or written.
        """
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),  # in-memory only: grpc takes PEM bytes, never a file
        )

    def tls13_context(self, *, server_side: bool, trusted_pem: bytes) -> ssl.SSLContext:
        """A TLS 1.3-only context that presents this identity and trusts exactly the certificates
        in ``trusted_pem`` (pinned, attested peers), demanding one from the peer on both sides.

        Python's ``ssl`` loads keys only from files, so the key is handed over through an
        anonymous in-memory file (``memfd``) that exists for this call alone: never a path on
        a disk, never logged.
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=trusted_pem.decode("ascii"))
        fd = os.memfd_create("tdxfl-tls-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, self.private_key_pem() + self.cert_pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return ctx

    def fresh_evidence(self, attester: Attester, nonce: bytes) -> bytes:
        """Encoded evidence for this key, a verifier's ``nonce`` (a freshness challenge) and this
        identity's task digest."""
        return make_evidence(attester, self.spki_der, nonce, self.task_digest).encode()


def load_certificate(cert: bytes) -> x509.Certificate:
    """Parse a PEM or DER certificate; raise AttestationError on anything else."""
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as e:
        raise AttestationError(f"not an X.509 certificate: {e}") from e


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER encoding of the certificate ``cert_pem`` (PEM or DER), as lower-case hex.

    This is how an attested peer's pinned certificate is named (enrollment table, audit log).
    Raises AttestationError when ``cert_pem`` is not a certificate.
    """
    der = load_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def check_certificate_validity(cert: x509.Certificate, now: dt.datetime, skew: dt.timedelta = CLOCK_SKEW) -> None:
    """Raise AttestationError unless ``cert`` is valid at ``now`` (a timezone-aware time).

    Valid means from ``skew`` before its notBefore (the peer's clock may run ahead of ours) to its
    notAfter, both included. The one validity check of both the live handshake and ``tdxfl
    verify-quote``.
    """
    if not cert.not_valid_before_utc - skew <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            f"certificate not valid at {now.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
        )


def certificate_spki(cert: x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of ``cert``."""
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def certificate_evidence(cert: x509.Certificate) -> TaggedEvidence:
    """The tagged evidence in ``cert``; AttestationError when absent or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(TAGGED_EVIDENCE_OID)
    except x509.ExtensionNotFound as e:
        raise AttestationError(
            f"certificate carries no attestation evidence (extension {TAGGED_EVIDENCE_OID.dotted_string} missing)"
        ) from e
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AttestationError("evidence extension has an unexpected type")
    return TaggedEvidence.decode(value.value)


@dataclass(frozen=True)
class Appraisal:
    """A peer's verified evidence together with the decision that was recorded for it."""

    evidence: VerifiedEvidence | None
    decision: Decision


#: evidence kinds by CBOR tag, to name them in a refusal even where no verifier for them exists
_KIND_OF_TAG = {TDX_EVIDENCE_TAG: "tdx", SIMULATED_EVIDENCE_TAG: "simulated"}


class PeerVerifier:
    """Appraises peers' RA-TLS certificates and fresh evidence against one policy."""

    def __init__(
        self,
        me: str,
        policy: Policy,
        verifiers: Sequence[Verifier] | Mapping[int, Verifier],
        decisions: DecisionLog,
        *,
        now: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``now`` is the clock certificates are judged by (it returns timezone-aware times); pass
        another one to appraise as of a fixed time (historic evidence, tests)."""
        self.me = me
        self.policy = policy
        self._verifiers = dict(verifiers) if isinstance(verifiers, Mapping) else {v.evidence_tag: v for v in verifiers}
        self.decisions = decisions
        self._now = now

    def check_policy(self, verified: VerifiedEvidence) -> None:
        """Raise AttestationRefused listing every policy violation of ``verified``."""
        reasons = self.policy.evaluate(verified)
        if reasons:
            raise AttestationRefused("; ".join(reasons))

    def verify_genuine(self, evidence: TaggedEvidence, spki_der: bytes, nonce: bytes | None = None) -> VerifiedEvidence:
        """Check the evidence kind is acceptable, the quote genuine and bound to the key and nonce,
        and any RTMR3 event log in the claims replayed to the quoted RTMR3 (ending with the claimed
        task digest, if any). The result carries the claimed task digest and the replayed log.

        Raises AttestationRefused when the policy does not accept the evidence kind, and
        AttestationError when the evidence is not genuine, not bound to the key and nonce, or its
        event log does not replay.
        """
        verifier = self._verifiers.get(evidence.tag)
        kind = verifier.tee if verifier else _KIND_OF_TAG.get(evidence.tag, f"tag {evidence.tag}")
        refusal = self.policy.tee_refusal(kind)
        if refusal:
            raise AttestationRefused(refusal)
        if verifier is None:
            raise AttestationError(f"no verifier configured for evidence kind {kind!r}")
        claims = evidence.parsed_claims()
        if not claims.matches_public_key(spki_der):
            raise AttestationError("evidence is bound to another key: claims' pubkey-hash does not match the TLS key")
        if nonce is not None and claims.nonce != nonce:
            raise AttestationError("evidence does not answer our challenge nonce (stale or replayed evidence)")
        verified = verifier.verify(evidence.quote)
        if not report_data_matches(verified.report.report_data, evidence.claims):
            raise AttestationError("quote REPORTDATA does not commit to the claims: quote not bound to this key")
        if claims.rtmr3_log is not None:
            check_rtmr3_log(claims.rtmr3_log, verified.report.rtmrs[3], claims.task)
        return replace(verified, task=claims.task, rtmr3_log=claims.rtmr3_log)

    def verify_certificate(
        self,
        certificate: bytes | x509.Certificate,
        *,
        evidence: bytes | None = None,
        nonce: bytes | None = None,
    ) -> VerifiedEvidence:
        """Check that ``certificate`` is valid at this verifier's ``now`` and that its evidence (or
        ``evidence``, for its key) is genuine and bound to its key and to ``nonce``.

        The policy judges only the evidence kind here (``check_policy`` judges the rest). Raises
        AttestationError (AttestationRefused for a refused kind) naming the failed check.
        """
        cert = certificate if isinstance(certificate, x509.Certificate) else load_certificate(certificate)
        check_certificate_validity(cert, self._now())
        tagged = TaggedEvidence.decode(evidence) if evidence is not None else certificate_evidence(cert)
        return self.verify_genuine(tagged, certificate_spki(cert), nonce)

    def appraise(
        self,
        peer: str,
        *,
        certificate: bytes | x509.Certificate,
        evidence: bytes | None = None,
        nonce: bytes | None = None,
    ) -> Appraisal:
        """Appraise a peer's certificate (or ``evidence`` for the certificate's key) and record it.

        Never raises for a refusal: the returned decision says what happened and why.
        """
        verified: VerifiedEvidence | None = None
        tee = mrtd = task = ""
        try:
            genuine = self.verify_certificate(certificate, evidence=evidence, nonce=nonce)
            tee, mrtd = genuine.tee, genuine.report.mrtd.hex()
            task = genuine.task.hex() if genuine.task is not None else ""
            self.check_policy(genuine)
            verified = genuine
            what = "fresh evidence" if evidence is not None or nonce is not None else "certificate evidence"
            decision = Decision(self.me, peer, "accepted", f"{what} verified and meets policy", tee, mrtd, task=task)
        except AttestationError as e:
            decision = Decision(self.me, peer, "refused", str(e), tee, mrtd, task=task)
            verified = None
        return Appraisal(verified, self.decisions.record(decision))
