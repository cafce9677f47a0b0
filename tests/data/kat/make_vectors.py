"""How the known-answer vectors in this folder were made. Run once; the tests never run it.

    cd <repo> && PYTHONPATH=src python tests/data/kat/make_vectors.py

The tests in ``tests/formats/`` read the committed output files and check them against values
written out by hand in the tests, so that a change to the bytes tdxfl writes (on disk, or in the
RA-TLS evidence extension) fails a test and old files are known to stay readable. This script
is kept only to document how each file was produced. Every random draw tdxfl makes while
writing them (salts, keystore context, key bytes) is replaced by the fixed values below, and
the keystore's clock is pinned, so running it again with an unchanged tdxfl rewrites exactly
the same bytes (RA-TLS certificates are signed with deterministic ECDSA, RFC 6979). If a rerun
produces different bytes, tdxfl's formats have changed: that is what the tests exist to catch,
so do not commit the new files unless the change is an intended new format version that also
keeps reading the old one.

Nothing here is secret: every key is a public test constant.

Files (all small):

``sealed-single.sealed``   one chunk: label "metrics", no metadata, default 1 MiB chunk size
``sealed-multi.sealed``    chunk size 16, 50-byte payload (3 full chunks + a final 2-byte one),
                           authenticated metadata
``sealed-empty.sealed``    empty payload: one final chunk of length 0
``checkpoints/round-0003.sealed``  a PS checkpoint written by ``SealedFileStore`` (label
                           "checkpoint"): 3 tensors (float32, bfloat16, int64) + metadata
``keystore-passphrase.ks`` key broker keystore under a passphrase (scrypt n=2**14, r=8, p=1,
                           recorded in the file), two keys
``keystore-keyfile.ks``    keystore under the key file ``keystore.key`` (64 hex digits), one key
``ratls-tdx.der``          RA-TLS certificate carrying the real Intel TDX sample quote
                           (tests/data/tdx/tdx_quote) under CBOR tag 60000, claims with a nonce
``ratls-simulated.der``    RA-TLS certificate carrying simulated evidence (CBOR tag 1953327206)
                           bound to the same key, claims without a nonce
``evidence-simulated.cbor`` fresh simulated evidence for the same key and a nonce: the
                           ``AttestReply.evidence`` bytes of the enrollment protocol
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import tdxfl.keybroker.keystore as keystore_module
from tdxfl.attestation.evidence import TAGGED_EVIDENCE_OID, TDX_EVIDENCE_TAG
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd
from tdxfl.attestation.interfaces import Attester
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import make_evidence, tls_name
from tdxfl.engine.records import BFLOAT16, TensorSet
from tdxfl.keybroker.keystore import Keystore
from tdxfl.store.model_store import SealedFileStore
from tdxfl.store.sealed import seal_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

# -- sealed files ------------------------------------------------------------------------------
SEALED_KEY = bytes(range(32))  # the model key for every sealed vector: 00 01 02 .. 1f

SINGLE_SALT = bytes([0x11]) * 32
SINGLE_PAYLOAD = b'{"round": 1, "accuracy": 0.5}\n{"round": 2, "accuracy": 0.75}\n'

MULTI_SALT = bytes([0x22]) * 32
MULTI_CHUNK = 16
MULTI_META = b'{"purpose":"kat","chunks":4}'
MULTI_PAYLOAD = bytes(range(50))

EMPTY_SALT = bytes([0x33]) * 32

CHECKPOINT_SALT = bytes([0x44]) * 32
CHECKPOINT_NAME = "round-0003"
CHECKPOINT_TENSORS = TensorSet.from_arrays(
    ["dense/kernel", "dense/bias", "step"],
    [
        np.array([[0.5, -1.25, 3.0], [0.125, -0.0, 1024.0]], dtype=np.float32),
        np.array([1.0, -2.5, 0.0078125], dtype=BFLOAT16),
        np.array(1234567890123, dtype=np.int64),
    ],
)
CHECKPOINT_META = {
    "round": 3,
    "version": 12,
    "accuracy": 0.875,
    "loss": 0.3125,
    "model": "mlp",
    "framework": "keras",
    "input_shape": [8, 8, 1],
    "num_classes": 10,
}

# -- keystores ---------------------------------------------------------------------------------
PASSPHRASE = "correct horse battery staple (kat)"
SCRYPT_N = 1 << 14  # the smallest tdxfl accepts: keeps opening the vector fast
KS_CONTEXT_RANDOM = bytes.fromhex("00112233445566778899aabbccddeeff")
KS_AUDIT_SECRET = bytes(range(0x80, 0xA0))
KS_KEYFILE_AUDIT_SECRET = bytes(range(0xA0, 0xC0))
KEY_ALPHA = bytes(range(0x40, 0x60))
KEY_BETA = bytes(range(0x60, 0x80))
KEY_VOLUME = bytes(range(0xC0, 0xE0))
KEYFILE_KEY = bytes(range(0xE0, 0x100))
KS_SALTS = [bytes([0x50 + i]) * 32 for i in range(6)]  # one per keystore write, in order
SAMPLE_MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
POLICY_ALPHA = {
    "tee": ["tdx"],
    "mrtd": [SAMPLE_MRTD],
    "rtmr3": ["ab" * 48],
    "tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
    "accepted_advisories": ["INTEL-SA-00615"],
    "allow_dynamic_platform": True,
    "allow_cached_keys": True,
    "allow_smt": True,
}
POLICY_BETA = {"tee": ["simulated"], "mrtd": "any"}
CREATED = ["2025-07-19T10:00:34+00:00", "2025-07-20T08:30:00+00:00", "2025-07-21T12:00:00+00:00"]

# -- RA-TLS evidence ---------------------------------------------------------------------------
# P-384 private scalar: SHA-384(b"tdxfl kat RA-TLS key") reduced into [1, n-1]
_P384_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
RATLS_SCALAR = int.from_bytes(hashlib.sha384(b"tdxfl kat RA-TLS key").digest(), "big") % (_P384_N - 1) + 1
RATLS_PARTY = "kat-ps"
RATLS_SERIAL = 0x7DF1_C0DE
RATLS_NOT_BEFORE = dt.datetime(2025, 7, 19, 9, 55, 34, tzinfo=dt.UTC)
RATLS_NOT_AFTER = RATLS_NOT_BEFORE + dt.timedelta(hours=12, minutes=5)
TDX_NONCE = bytes(range(0xF0, 0x100)) * 2  # 32 bytes
SIM_NONCE = bytes.fromhex("c0ffee00") * 8  # 32 bytes
SIM_TD = SimulatedTd(
    mrtd=bytes(range(48)),
    rtmrs=(bytes([0x10]) * 48, bytes([0x11]) * 48, bytes([0x12]) * 48, bytes([0x13]) * 48),
    mrconfigid=bytes([0x20]) * 48,
    mrowner=bytes([0x30]) * 48,
    debug=False,
)


@contextmanager
def fixed_random(*draws: bytes) -> Iterator[None]:
    """Make os.urandom return ``draws`` in order (each must match the requested size), then fail."""
    queue = list(draws)
    real = os.urandom

    def fake(n: int) -> bytes:
        if not queue:
            raise AssertionError(f"unexpected os.urandom({n}) draw")
        value = queue.pop(0)
        if len(value) != n:
            raise AssertionError(f"os.urandom({n}) drawn where a {len(value)}-byte value was planned")
        return value

    os.urandom = fake
    try:
        yield
    finally:
        os.urandom = real
    if queue:
        raise AssertionError(f"{len(queue)} planned random draws were not used")


@contextmanager
def fixed_clock(*stamps: str) -> Iterator[None]:
    """Make the keystore's creation timestamps ``stamps``, in order."""
    queue = list(stamps)
    real = keystore_module._now
    keystore_module._now = lambda: queue.pop(0)
    try:
        yield
    finally:
        keystore_module._now = real


def make_sealed() -> None:
    with fixed_random(SINGLE_SALT):
        seal_file(HERE / "sealed-single.sealed", SEALED_KEY, SINGLE_PAYLOAD, label="metrics")
    with fixed_random(MULTI_SALT):
        seal_file(
            HERE / "sealed-multi.sealed",
            SEALED_KEY,
            MULTI_PAYLOAD,
            label="kat-multi",
            metadata=MULTI_META,
            chunk_size=MULTI_CHUNK,
        )
    with fixed_random(EMPTY_SALT):
        seal_file(HERE / "sealed-empty.sealed", SEALED_KEY, b"", label="kat-empty")
    store = SealedFileStore(HERE / "checkpoints", SEALED_KEY, label="checkpoint")
    with fixed_random(CHECKPOINT_SALT):
        store.save(CHECKPOINT_NAME, CHECKPOINT_TENSORS, CHECKPOINT_META)


def make_keystores() -> None:
    for name in ("keystore-passphrase.ks", "keystore-keyfile.ks"):
        (HERE / name).unlink(missing_ok=True)
    salts = iter(KS_SALTS)
    with fixed_clock(*CREATED[:2]):
        with fixed_random(KS_CONTEXT_RANDOM, KS_AUDIT_SECRET, next(salts)):
            ks = Keystore.create(HERE / "keystore-passphrase.ks", passphrase=PASSPHRASE, scrypt_n=SCRYPT_N)
        with fixed_random(KEY_ALPHA, next(salts)):
            ks.new_key("model-alpha", Policy.from_dict(POLICY_ALPHA), ["ps", "worker"])
        with fixed_random(KEY_BETA, next(salts)):
            ks.new_key("model-beta", Policy.from_dict(POLICY_BETA), ["worker"])
    key_file = HERE / "keystore.key"
    key_file.write_text(KEYFILE_KEY.hex() + "\n")
    key_file.chmod(0o600)  # read_key_file refuses group/other access (git checks it out 0644)
    with fixed_clock(CREATED[2]):
        with fixed_random(KS_KEYFILE_AUDIT_SECRET, next(salts)):
            ks = Keystore.create(HERE / "keystore-keyfile.ks", key_file=key_file)
        with fixed_random(KEY_VOLUME, next(salts)):
            ks.new_key("volume-key", Policy(), ["ps"])
    for lock in HERE.glob("*.lock"):
        lock.unlink()


class SampleQuoteAttester(Attester):
    """Answers every request with the real Intel sample quote (whose REPORTDATA is fixed)."""

    tee = "tdx"
    evidence_tag = TDX_EVIDENCE_TAG

    def quote(self, report_data: bytes) -> bytes:
        return (REPO / "tests" / "data" / "tdx" / "tdx_quote").read_bytes()


def ratls_certificate(key: ec.EllipticCurvePrivateKey, extension_value: bytes) -> bytes:
    """DER certificate laid out as ``TlsIdentity.create`` makes them, with fixed serial and dates."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tls_name(RATLS_PARTY))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(RATLS_SERIAL)
        .not_valid_before(RATLS_NOT_BEFORE)
        .not_valid_after(RATLS_NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(tls_name(RATLS_PARTY))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.UnrecognizedExtension(TAGGED_EVIDENCE_OID, extension_value), critical=False)
        .sign(key, hashes.SHA384(), ecdsa_deterministic=True)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def make_evidence_vectors() -> None:
    key = ec.derive_private_key(RATLS_SCALAR, ec.SECP384R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    tdx = make_evidence(SampleQuoteAttester(), spki, TDX_NONCE).encode()
    (HERE / "ratls-tdx.der").write_bytes(ratls_certificate(key, tdx))
    sim = SimulatedAttester(SIM_TD)
    (HERE / "ratls-simulated.der").write_bytes(ratls_certificate(key, make_evidence(sim, spki, None).encode()))
    (HERE / "evidence-simulated.cbor").write_bytes(make_evidence(sim, spki, SIM_NONCE).encode())


def main() -> int:
    make_sealed()
    make_keystores()
    make_evidence_vectors()
    for path in sorted(HERE.rglob("*")):
        if path.is_file() and path.suffix != ".py":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"{path.stat().st_size:6d}  {digest}  {path.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
