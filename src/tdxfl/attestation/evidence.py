"""The RA-TLS evidence format: TCG DICE tagged evidence in an X.509 extension.

Certificate extension ``tcg-dice-TaggedEvidence`` (OID 2.23.133.5.4.9) holds a CBOR tag whose
number names the evidence kind and whose content is ``[quote, claims]``: ``claims`` is the
CBOR encoding of a map ``{"pubkey-hash": [hash-alg-id, hash(SubjectPublicKeyInfo DER)],
"nonce": bytes?, "task": bytes?, "rtmr3-log": [bytes, ...]?}``. The quote's REPORTDATA is
SHA-384(claims) followed by 16 zero bytes, which binds the quote to the certificate's key (and to
the verifier's nonce, when there is one); verifiers also accept SHA-256(claims) and
SHA-512(claims), zero-padded to 64 bytes, as other implementations make them. This is the layout
of the interoperable RA-TLS format used by Intel's TDX/SGX TLS libraries.

tdxfl adds two optional entries, bound through REPORTDATA like the key: ``"task"``, the 48-byte
digest of the task code the party runs (:mod:`tdxfl.attestation.code_identity`), and
``"rtmr3-log"``, the 48-byte events extended into RTMR3 since boot, in order
(:mod:`tdxfl.attestation.eventlog`). Claims without them encode exactly as before.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import cbor2
from cryptography import x509

from tdxfl.attestation.code_identity import TASK_DIGEST_SIZE
from tdxfl.attestation.eventlog import MAX_RTMR3_EVENTS, RTMR_SIZE
from tdxfl.attestation.interfaces import REPORT_DATA_SIZE
from tdxfl.errors import AttestationError

TAGGED_EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
#: CBOR tag for an Intel TDX quote (interoperable RA-TLS)
TDX_EVIDENCE_TAG = 60000
#: CBOR tag for tdxfl's simulated-TD evidence (never accepted by a policy that requires TDX)
SIMULATED_EVIDENCE_TAG = 1953327206  # "tdxf" in ASCII, first-come-first-served CBOR tag range

#: IANA "Named Information Hash Algorithm" identifiers
HASH_ALGORITHMS = {1: "sha256", 7: "sha384", 8: "sha512"}
PUBKEY_HASH_ALG = 7
#: the largest evidence extension decoded (a TDX quote with its PCK chain is about 5 KiB)
MAX_EVIDENCE_BYTES = 64 << 10
#: the largest claims decoded (the key hash, a nonce, a task digest and a full RTMR3 log fit)
MAX_CLAIMS_BYTES = 256 + (RTMR_SIZE + 2) * MAX_RTMR3_EVENTS


@dataclass(frozen=True)
class TaggedEvidence:
    """Decoded evidence extension: the kind tag, the raw quote and the encoded claims."""

    tag: int
    quote: bytes
    claims: bytes

    def encode(self) -> bytes:
        """CBOR bytes for the X.509 extension value."""
        return cbor2.dumps(cbor2.CBORTag(self.tag, [self.quote, self.claims]))

    @classmethod
    def decode(cls, data: bytes) -> TaggedEvidence:
        """Parse an extension value; raise AttestationError when it is not tagged evidence (or is
        larger than ``MAX_EVIDENCE_BYTES``)."""
        if len(data) > MAX_EVIDENCE_BYTES:
            raise AttestationError(
                f"evidence extension is {len(data)} bytes, more than the {MAX_EVIDENCE_BYTES} accepted"
            )
        try:
            item = cbor2.loads(data)
        except Exception as e:  # cbor2 raises several types for malformed input
            raise AttestationError(f"evidence extension is not valid CBOR: {e}") from e
        if not isinstance(item, cbor2.CBORTag):
            raise AttestationError("evidence extension is not a CBOR tag")
        value = item.value
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not isinstance(value[0], bytes)
            or not isinstance(value[1], bytes)
        ):
            raise AttestationError("tagged evidence must be [quote: bstr, claims: bstr]")
        return cls(tag=item.tag, quote=value[0], claims=value[1])

    def parsed_claims(self) -> Claims:
        """Decode ``claims`` (checked for shape)."""
        return Claims.decode(self.claims)


@dataclass(frozen=True)
class Claims:
    """What the quote's REPORTDATA commits to: the key (by hash), an optional nonce, and optionally
    the task code's digest and the RTMR3 event log."""

    pubkey_hash_alg: int
    pubkey_hash: bytes
    nonce: bytes | None = None
    task: bytes | None = None
    rtmr3_log: tuple[bytes, ...] | None = None

    @classmethod
    def for_public_key(
        cls,
        spki_der: bytes,
        nonce: bytes | None = None,
        *,
        task: bytes | None = None,
        rtmr3_log: tuple[bytes, ...] | None = None,
    ) -> Claims:
        """Claims binding the DER SubjectPublicKeyInfo ``spki_der`` (and ``nonce``, ``task``,
        ``rtmr3_log``)."""
        digest = hashlib.new(HASH_ALGORITHMS[PUBKEY_HASH_ALG], spki_der).digest()
        return cls(PUBKEY_HASH_ALG, digest, nonce, task, rtmr3_log)

    def encode(self) -> bytes:
        """Canonical CBOR encoding (the bytes that REPORTDATA hashes); entries that are None are
        left out."""
        m: dict[str, object] = {"pubkey-hash": cbor2.dumps([self.pubkey_hash_alg, self.pubkey_hash])}
        if self.nonce is not None:
            m["nonce"] = self.nonce
        if self.task is not None:
            m["task"] = self.task
        if self.rtmr3_log is not None:
            m["rtmr3-log"] = list(self.rtmr3_log)
        return cbor2.dumps(m, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> Claims:
        """Parse claims bytes; raise AttestationError on any deviation from the format (and on
        claims larger than ``MAX_CLAIMS_BYTES``, before decoding them)."""
        if len(data) > MAX_CLAIMS_BYTES:
            raise AttestationError(f"claims are {len(data)} bytes, more than the {MAX_CLAIMS_BYTES} accepted")
        try:
            m = cbor2.loads(data)
        except Exception as e:
            raise AttestationError(f"claims are not valid CBOR: {e}") from e
        if not isinstance(m, dict) or "pubkey-hash" not in m:
            raise AttestationError("claims must be a CBOR map with a 'pubkey-hash' entry")
        raw = m["pubkey-hash"]
        if not isinstance(raw, bytes):
            raise AttestationError("claims 'pubkey-hash' must be a byte string holding [hash-alg-id, bstr]")
        try:
            ph = cbor2.loads(raw)
        except Exception as e:
            raise AttestationError(f"claims 'pubkey-hash' is not valid CBOR: {e}") from e
        if not (isinstance(ph, (list, tuple)) and len(ph) == 2 and isinstance(ph[0], int) and isinstance(ph[1], bytes)):
            raise AttestationError("claims 'pubkey-hash' must be [hash-alg-id, bstr]")
        if ph[0] not in HASH_ALGORITHMS:
            raise AttestationError(f"claims 'pubkey-hash' uses unsupported hash algorithm id {ph[0]}")
        nonce = m.get("nonce")
        if nonce is not None and not isinstance(nonce, bytes):
            raise AttestationError("claims 'nonce' must be a byte string")
        task = m.get("task")
        if task is not None and not (isinstance(task, bytes) and len(task) == TASK_DIGEST_SIZE):
            raise AttestationError(f"claims 'task' must be a {TASK_DIGEST_SIZE}-byte string")
        return cls(ph[0], ph[1], nonce, task, _decode_rtmr3_log(m.get("rtmr3-log")))

    def matches_public_key(self, spki_der: bytes) -> bool:
        """True when ``pubkey_hash`` is the hash of ``spki_der`` (constant-time compare)."""
        digest = hashlib.new(HASH_ALGORITHMS[self.pubkey_hash_alg], spki_der).digest()
        return hmac.compare_digest(digest, self.pubkey_hash)


def _decode_rtmr3_log(raw: object) -> tuple[bytes, ...] | None:
    if raw is None:
        return None
    if not (isinstance(raw, (list, tuple)) and 1 <= len(raw) <= MAX_RTMR3_EVENTS):
        raise AttestationError(f"claims 'rtmr3-log' must be a list of 1 to {MAX_RTMR3_EVENTS} events")
    if not all(isinstance(e, bytes) and len(e) == RTMR_SIZE for e in raw):
        raise AttestationError(f"claims 'rtmr3-log' events must be {RTMR_SIZE}-byte strings")
    return tuple(raw)


def report_data_for(claims_bytes: bytes) -> bytes:
    """REPORTDATA that binds the encoded claims: SHA-384(claims) zero-padded to 64 bytes."""
    return hashlib.sha384(claims_bytes).digest().ljust(REPORT_DATA_SIZE, b"\0")


def report_data_matches(report_data: bytes, claims_bytes: bytes) -> bool:
    """True when REPORTDATA commits to ``claims_bytes`` by SHA-384 (TDX), SHA-256 (SGX/spec) or
    SHA-512, each zero-padded to 64 bytes as the interoperable RA-TLS implementations do."""
    for name in ("sha384", "sha256", "sha512"):
        if hmac.compare_digest(report_data, hashlib.new(name, claims_bytes).digest().ljust(REPORT_DATA_SIZE, b"\0")):
            return True
    return False
