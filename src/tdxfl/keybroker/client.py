"""Fetch a model key from the key broker: attest the broker, enroll, ask, keep the key in memory.

``fetch_key`` retries (with exponential backoff) only while the broker cannot be reached, then
raises ``tdxfl.errors.Unavailable``; a refusal by either side -- attestation or the key's release
policy -- is final and raised as ``tdxfl.errors.KeyRefused`` or ``AttestationRefused`` with the
reason.
"""

from __future__ import annotations

import logging

import grpc

from tdxfl.attestation.interfaces import Attester
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.errors import KeyRefused
from tdxfl.store.sealed import KEY_SIZE
from tdxfl.transport.attested import connect
from tdxfl.transport.proto import keybroker_pb2 as kb
from tdxfl.transport.proto import keybroker_pb2_grpc as kb_grpc
from tdxfl.transport.retry import is_transient, with_backoff

__all__ = ["DEFAULT_BROKER_PARTY", "fetch_key"]

log = logging.getLogger(__name__)
DEFAULT_BROKER_PARTY = "keybroker"


def _fetch_once(
    party: str,
    role: str,
    attester: Attester,
    verifier: PeerVerifier,
    key_name: str,
    broker_address: str,
    enroll_address: str,
    broker_party: str,
    timeout: float,
    task_digest: bytes | None,
) -> bytes:
    channel = connect(
        party,
        role,
        attester,
        verifier,
        broker_party,
        broker_address,
        enroll_address,
        timeout=timeout,
        task_digest=task_digest,
    )
    try:
        reply = kb_grpc.KeyBrokerStub(channel.channel).ReleaseKey(
            kb.ReleaseKeyRequest(key_name=key_name), timeout=timeout
        )
    finally:
        channel.close()
    if not reply.released:
        raise KeyRefused(key_name, reply.reason or "no reason given")
    if len(reply.key) != KEY_SIZE:
        raise KeyRefused(key_name, f"broker sent a {len(reply.key)}-byte key, expected {KEY_SIZE}")
    return bytes(reply.key)


def fetch_key(
    party: str,
    role: str,
    attester: Attester,
    verifier: PeerVerifier,
    key_name: str,
    broker_address: str,
    enroll_address: str,
    *,
    broker_party: str = DEFAULT_BROKER_PARTY,
    retries: int = 10,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    timeout: float = 30.0,
    task_digest: bytes | None = None,
) -> bytes:
    """Fetch the 32-byte key ``key_name`` from the broker; it is returned in memory only.

    ``verifier`` holds the policy *we* demand of the broker's TD. ``party``/``role`` are how we
    enroll (the broker's enrollment table must list them); ``broker_party`` is the broker's name
    (its certificate's TLS name); our evidence claims ``task_digest`` when given. Unreachable
    broker: up to ``retries`` further attempts, sleeping ``backoff_s`` doubling up to
    ``max_backoff_s``; then Unavailable. Raises KeyRefused when the broker refuses the key,
    ``tdxfl.errors.AttestationRefused`` when either side refuses attestation.
    """

    def attempt() -> bytes:
        try:
            return _fetch_once(
                party,
                role,
                attester,
                verifier,
                key_name,
                broker_address,
                enroll_address,
                broker_party,
                timeout,
                task_digest,
            )
        except grpc.RpcError as e:
            if is_transient(e):
                raise
            details = e.details() if isinstance(e, grpc.Call) else str(e)
            code = e.code().name if isinstance(e, grpc.Call) else "error"
            raise KeyRefused(key_name, f"broker answered {code}: {details}") from None

    key = with_backoff(
        attempt,
        what=f"key broker at {broker_address} (enrollment {enroll_address})",
        retries=retries,
        backoff_s=backoff_s,
        max_backoff_s=max_backoff_s,
    )
    log.info("fetched key %r from key broker %s", key_name, broker_party)
    return key
