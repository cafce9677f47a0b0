"""Derive the model-store key from the federation's configured secret.

``derive_store_key(secret, context)`` runs scrypt (memory-hard) over the secret with a salt that is
a hash of ``context``. Design tradeoff:

* The salt is *deterministic* (derived from the context string, e.g. the federation id and the
  party's role) rather than random. Every party and every restart must re-derive the same key
  from configuration alone, with no extra state to store or protect, so a random salt would have
  to be persisted somewhere next to the sealed files anyway.
* The price is that an attacker who knows the context can start a brute-force search before
  seeing any file, and two deployments that reuse a secret *and* a context share a key. Distinct
  contexts still give unrelated keys and defeat generic precomputed tables.
* scrypt (N=2**15, r=8, p=1: 32 MiB and roughly 0.1 s per derivation) makes each guess expensive,
  which matters only if the secret is guessable. The secret should be high-entropy (at least 128
  random bits, e.g. 32 random bytes in base64); then the KDF cost is just defence in depth.

Call it once at start-up and keep the 32-byte result; never log it.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Final

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = ["SCRYPT_N", "SCRYPT_P", "SCRYPT_R", "derive_store_key"]

SCRYPT_N: Final = 1 << 15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_MIN_N: Final = 1 << 14
_SALT_DOMAIN: Final = b"tdxfl store key salt v1\x00"


def derive_store_key(
    secret: str | bytes,
    context: str,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> bytes:
    """Return a 32-byte store key from ``secret``, bound to ``context`` (e.g. ``"fed-42/server"``).

    ``secret`` as str is NFC-normalized and UTF-8 encoded, so the same passphrase typed on
    different systems gives the same key. Salt = SHA-256(domain tag || UTF-8 context). ``n`` must
    be a power of two of at least 2**14; the cost parameters are part of the key's identity, so
    every party must use the same ones. Raises ValueError for an empty secret or context or weak
    parameters; the secret never appears in error messages.
    """
    if isinstance(secret, str):
        secret_bytes = unicodedata.normalize("NFC", secret).encode("utf-8")
    elif isinstance(secret, (bytes, bytearray, memoryview)):
        secret_bytes = bytes(secret)
    else:
        raise ValueError(f"secret must be str or bytes, got {type(secret).__name__}")
    if not secret_bytes:
        raise ValueError("secret must not be empty")
    if not isinstance(context, str) or not context:
        raise ValueError("context must be a non-empty str")
    if n < _MIN_N or n & (n - 1):
        raise ValueError(f"scrypt n must be a power of two >= {_MIN_N}, got {n}")
    if r < 1 or p < 1:
        raise ValueError("scrypt r and p must be >= 1")
    salt = hashlib.sha256(_SALT_DOMAIN + context.encode("utf-8")).digest()
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret_bytes)
