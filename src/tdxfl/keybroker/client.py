"""Talk to the key broker: attest it, enroll, then fetch keys and record checkpoints.

:class:`KeyBrokerClient` is one attested session with the broker (connected on first use, and
again after the connection breaks): ``fetch_key`` releases a key into memory;
``record_checkpoint`` / ``latest_checkpoint`` keep a parameter server's checkpoint records
(rollback protection, see :mod:`tdxfl.store.rollback`; role ``ps`` only). :func:`fetch_key` is
the one-shot form.

Each call retries (with exponential backoff, re-attesting the broker on a fresh connection) only
while the broker cannot be reached, then raises ``tdxfl.errors.Unavailable``; a refusal by either
side -- attestation, a key's release policy, a checkpoint record -- is final and raised as
``tdxfl.errors.AttestationRefused``, ``tdxfl.errors.KeyRefused`` or :class:`CheckpointRefused`
with the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

import grpc

from tdxfl.attestation.interfaces import Attester
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.errors import ConfigError, KeyRefused
from tdxfl.store.rollback import CheckpointRecord, validate_run_id
from tdxfl.store.sealed import KEY_SIZE
from tdxfl.transport.attested import AttestedChannel, connect
from tdxfl.transport.proto import keybroker_pb2 as kb
from tdxfl.transport.proto import keybroker_pb2_grpc as kb_grpc
from tdxfl.transport.retry import with_backoff

__all__ = ["DEFAULT_BROKER_PARTY", "CheckpointRefused", "KeyBrokerClient", "fetch_key"]

log = logging.getLogger(__name__)
DEFAULT_BROKER_PARTY = "keybroker"
T = TypeVar("T")


class CheckpointRefused(KeyRefused):
    """The key broker refused to record (or to look up) a checkpoint; ``reason`` says why.

    A ``KeyRefused`` (exit 4, like every refusal by the broker); ``run_id`` names the run.
    """

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(run_id, reason)
        self.run_id = run_id
        self.args = (f"key broker refused the checkpoint record of run {run_id!r}: {reason}",)


def _rpc_refusal(e: grpc.RpcError) -> str:
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    code = e.code().name if isinstance(e, grpc.Call) else "error"
    return f"broker answered {code}: {details}"


class KeyBrokerClient:
    """An attested session with the key broker, as party ``party`` enrolled in role ``role``.

    ``verifier`` holds the policy *we* demand of the broker's TD; ``broker_party`` is the broker's
    name (its certificate's TLS name); our evidence claims ``task_digest`` when given. The
    session attests and enrolls on first use and again whenever its connection broke. An
    unreachable broker is retried ``retries`` more times per call, sleeping ``backoff_s``
    doubling up to ``max_backoff_s``, then Unavailable; each RPC waits at most ``timeout``
    seconds. Thread-safe; close it (or use it as a context manager) when done.
    """

    def __init__(
        self,
        party: str,
        role: str,
        attester: Attester,
        verifier: PeerVerifier,
        broker_address: str,
        enroll_address: str,
        *,
        broker_party: str = DEFAULT_BROKER_PARTY,
        retries: int = 10,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        timeout: float = 30.0,
        task_digest: bytes | None = None,
    ) -> None:
        """No I/O: the first call connects."""
        self.party = party
        self.role = role
        self._attester = attester
        self._verifier = verifier
        self.broker_address = broker_address
        self.enroll_address = enroll_address
        self.broker_party = broker_party
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._timeout = timeout
        self._task_digest = task_digest
        self._lock = threading.Lock()
        self._channel: AttestedChannel | None = None

    def __enter__(self) -> KeyBrokerClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a later call connects again)."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _stub(self) -> tuple[kb_grpc.KeyBrokerStub, bool]:
        """The stub of the current session, connecting first if there is none; whether it is new."""
        with self._lock:
            channel = self._channel
        fresh = channel is None
        if channel is None:
            channel = connect(
                self.party,
                self.role,
                self._attester,
                self._verifier,
                self.broker_party,
                self.broker_address,
                self.enroll_address,
                timeout=self._timeout,
                task_digest=self._task_digest,
            )
            with self._lock:
                old, self._channel = self._channel, channel
            if old is not None:
                old.close()
        return kb_grpc.KeyBrokerStub(channel.channel), fresh

    def _drop(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _call(self, rpc: Callable[[kb_grpc.KeyBrokerStub], T], refused: Callable[[str], Exception]) -> T:
        """Run ``rpc`` on the session, reconnecting while the broker is unreachable; a non-transient
        RPC error becomes ``refused(reason)``."""

        def attempt() -> T:
            stub, fresh = self._stub()
            try:
                return rpc(stub)
            except grpc.RpcError as e:
                self._drop()  # whatever broke, the next try attests the broker on a fresh connection
                if fresh or not isinstance(e, grpc.Call) or e.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    raise
            # A session the broker no longer knows (it restarted, or we enrolled again elsewhere):
            # enroll once more, at once.
            stub, _ = self._stub()
            try:
                return rpc(stub)
            except grpc.RpcError:
                self._drop()
                raise

        try:
            return with_backoff(
                attempt,
                what=f"key broker at {self.broker_address} (enrollment {self.enroll_address})",
                retries=self._retries,
                backoff_s=self._backoff_s,
                max_backoff_s=self._max_backoff_s,
            )
        except grpc.RpcError as e:  # not transient: with_backoff raised Unavailable for those
            raise refused(_rpc_refusal(e)) from None

    # -- keys -----------------------------------------------------------------------------
    def fetch_key(self, key_name: str) -> bytes:
        """The 32-byte key ``key_name``, in memory only.

        Raises KeyRefused when the broker refuses it, ``tdxfl.errors.AttestationRefused`` when
        either side refuses attestation, Unavailable when the broker cannot be reached.
        """
        reply = self._call(
            lambda stub: stub.ReleaseKey(kb.ReleaseKeyRequest(key_name=key_name), timeout=self._timeout),
            lambda reason: KeyRefused(key_name, reason),
        )
        if not reply.released:
            raise KeyRefused(key_name, reply.reason or "no reason given")
        if len(reply.key) != KEY_SIZE:
            raise KeyRefused(key_name, f"broker sent a {len(reply.key)}-byte key, expected {KEY_SIZE}")
        log.info("fetched key %r from key broker %s", key_name, self.broker_party)
        return bytes(reply.key)

    # -- checkpoint records ---------------------------------------------------------------
    def record_checkpoint(self, run_id: str, round: int, sha256: bytes) -> CheckpointRecord:
        """Report checkpoint ``round`` of run ``run_id`` (``sha256``: SHA-256 of its sealed file,
        :func:`tdxfl.store.rollback.file_sha256`) as the run's latest; returns the record with its
        ``audit_seq``. It is durable at the broker when this returns.

        Raises CheckpointRefused when the broker refuses it (our role is not ``ps``; the round is
        older than the run's latest record, or the latest round with another digest),
        ConfigError for an invalid run id, round or digest (nothing is sent), Unavailable when the
        broker cannot be reached.
        """
        record = CheckpointRecord(run_id, round, sha256)
        message = kb.CheckpointRecord(run_id=record.run_id, round=record.round, sha256=record.sha256)
        reply = self._call(
            lambda stub: stub.RecordCheckpoint(message, timeout=self._timeout),
            lambda reason: CheckpointRefused(run_id, reason),
        )
        if not reply.recorded:
            raise CheckpointRefused(run_id, reply.reason or "no reason given")
        log.info("key broker recorded run %r %s (audit entry %d)", run_id, record.describe(), reply.audit_seq)
        return CheckpointRecord(record.run_id, record.round, record.sha256, audit_seq=reply.audit_seq)

    def latest_checkpoint(self, run_id: str) -> CheckpointRecord | None:
        """The latest checkpoint we recorded for run ``run_id`` (with its ``audit_seq``), or None.

        Raises CheckpointRefused when the broker refuses the lookup (our role is not ``ps``),
        ConfigError for an invalid run id, Unavailable when the broker cannot be reached.
        """
        request = kb.LatestCheckpointRequest(run_id=validate_run_id(run_id))
        reply = self._call(
            lambda stub: stub.LatestCheckpoint(request, timeout=self._timeout),
            lambda reason: CheckpointRefused(run_id, reason),
        )
        if not reply.found:
            return None
        try:
            return CheckpointRecord(
                reply.record.run_id, reply.record.round, bytes(reply.record.sha256), audit_seq=reply.audit_seq
            )
        except ConfigError as e:
            raise CheckpointRefused(run_id, f"broker sent a malformed record: {e}") from None


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
    """Fetch the 32-byte key ``key_name`` from the broker on a session of its own (see
    :class:`KeyBrokerClient` for the arguments); it is returned in memory only.

    Raises KeyRefused when the broker refuses the key, ``tdxfl.errors.AttestationRefused`` when
    either side refuses attestation, Unavailable when the broker cannot be reached.
    """
    with KeyBrokerClient(
        party,
        role,
        attester,
        verifier,
        broker_address,
        enroll_address,
        broker_party=broker_party,
        retries=retries,
        backoff_s=backoff_s,
        max_backoff_s=max_backoff_s,
        timeout=timeout,
        task_digest=task_digest,
    ) as client:
        return client.fetch_key(key_name)
