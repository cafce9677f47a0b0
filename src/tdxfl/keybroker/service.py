"""The ``KeyBroker`` gRPC servicer: release a named key to an attested peer that meets its policy.

The peer reached the broker's mutual-TLS port, so it enrolled with evidence answering one of the
broker's nonces and passed the broker's *enrollment* policy. Each key is stricter: for every
request the broker re-appraises the peer's pinned certificate against the *key's* policy (the
certificate's embedded evidence is checked as genuine and bound to the TLS key; its nonce was
checked at enrollment and is not re-checked) and requires the peer's enrolled role to be one the
key allows. The key travels only inside the mutual RA-TLS channel. Every release and refusal is
appended to the audit log (before any key leaves; if the log cannot be written nothing is
released) and recorded as a ``Decision``. Calls from certificates that are not enrolled are
aborted UNAUTHENTICATED by ``peer_of`` before any key is looked at; enrollment refusals are
recorded by the AttestedServer in the broker's decision log, not in the audit log.

``RecordCheckpoint`` and ``LatestCheckpoint`` keep the parameter servers' checkpoint records
(rollback protection, :mod:`tdxfl.store.rollback`): only a peer enrolled with role ``ps`` may
call them (PERMISSION_DENIED otherwise; a refused record is audited). Records are kept per
(recording party, run id) in the audit log, durably before the reply, and only move forward.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tdxfl.attestation.decisions import Decision, DecisionLog, escaped
from tdxfl.attestation.interfaces import VerifiedEvidence, Verifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import (
    PeerVerifier,
    certificate_evidence,
    certificate_fingerprint,
    certificate_spki,
    load_certificate,
)
from tdxfl.errors import AttestationError, ConfigError, SealedFileError
from tdxfl.keybroker.audit import AuditLog, RecordOutcome
from tdxfl.keybroker.keystore import Keystore
from tdxfl.store.rollback import CheckpointRecord, validate_run_id
from tdxfl.transport.attested import AttestedServer, EnrolledPeer
from tdxfl.transport.proto import keybroker_pb2 as kb
from tdxfl.transport.proto import keybroker_pb2_grpc as kb_grpc

__all__ = ["CHECKPOINT_ROLE", "KeyBrokerService", "ReleaseOutcome"]

log = logging.getLogger(__name__)
_MAX_KEY_NAME = 128
#: the only role that may record and look up checkpoints
CHECKPOINT_ROLE = "ps"
# Accepts any genuine evidence kind and any measurement: used only to *read* a refused peer's
# measurements for the audit log, never to decide.
_OBSERVE_ONLY = Policy(tee=frozenset({"tdx", "simulated"}), mrtd=None)


@dataclass(frozen=True)
class ReleaseOutcome:
    """The broker's answer to one request. ``key`` is set only when released (kept out of repr)."""

    released: bool
    reason: str
    audit_seq: int
    key: bytes = b""

    def __repr__(self) -> str:
        return f"ReleaseOutcome(released={self.released}, reason={self.reason!r}, audit_seq={self.audit_seq})"


class KeyBrokerService(kb_grpc.KeyBrokerServicer):
    """Serves ``ReleaseKey`` on an AttestedServer's main port."""

    def __init__(
        self,
        server: AttestedServer,
        keystore: Keystore,
        audit: AuditLog,
        verifiers: Sequence[Verifier],
        decisions: DecisionLog,
    ) -> None:
        """``verifiers`` check evidence genuineness; each key's policy judges it."""
        self._server = server
        self._keystore = keystore
        self._audit = audit
        self._verifiers = list(verifiers)
        self.decisions = decisions

    # -- the decision, independent of gRPC ------------------------------------------------
    def _measure(self, cert_pem: bytes) -> VerifiedEvidence | None:
        """The peer's genuine measurements whatever any policy says, for the audit; None if not genuine."""
        try:
            cert = load_certificate(cert_pem)
            observer = PeerVerifier(self._server.party, _OBSERVE_ONLY, self._verifiers, DecisionLog())
            return observer.verify_genuine(certificate_evidence(cert), certificate_spki(cert))
        except AttestationError:
            return None

    def decide(self, peer: EnrolledPeer, key_name: str) -> ReleaseOutcome:
        """Judge ``peer`` against key ``key_name``'s roles and policy; audit and return the outcome.

        Two decisions are recorded: the key policy's appraisal (verifier ``<broker>/key:<name>``)
        and the release verdict itself (verifier ``<broker>/release:<name>``).
        Raises OSError only when the audit entry cannot be written (then nothing is released).
        """
        judge = f"{self._server.party}/key:{key_name[:_MAX_KEY_NAME]}"
        fingerprint = certificate_fingerprint(peer.cert_pem)  # parses: it was pinned at enrollment
        evidence: VerifiedEvidence | None = None
        tee = ""
        reasons: list[str] = []
        key = b""
        entry = None
        if not key_name or len(key_name) > _MAX_KEY_NAME:
            reasons.append("invalid key name")
        else:
            try:
                entry = self._keystore.get(key_name)
            except (ConfigError, SealedFileError) as e:  # no such key, or the keystore cannot be read
                reasons.append(str(e))
        if entry is not None:
            if peer.role not in entry.roles:
                reasons.append(
                    f"role {peer.role!r} may not fetch key {key_name!r} (allowed roles: {', '.join(entry.roles)})"
                )
            appraisal = PeerVerifier(judge, entry.policy, self._verifiers, self.decisions).appraise(
                peer.party, certificate=peer.cert_pem
            )
            if appraisal.decision.accepted:
                evidence = appraisal.evidence
            else:
                reasons.append(f"key policy refuses this TD: {appraisal.decision.reason}")
            tee = appraisal.decision.tee
        if evidence is None:
            evidence = self._measure(peer.cert_pem)
        released = entry is not None and not reasons
        if released:
            assert entry is not None
            reason = f"role {peer.role!r} allowed and the TD's evidence meets key {key_name!r}'s policy"
            key = entry.key
        else:
            reason = "; ".join(reasons)
        self.decisions.record(
            Decision(
                f"{self._server.party}/release:{key_name[:_MAX_KEY_NAME]}",
                peer.party,
                "accepted" if released else "refused",
                reason,
                evidence.tee if evidence is not None else tee,
                evidence.report.mrtd.hex() if evidence is not None else "",
            )
        )
        record = self._audit.append(
            party=peer.party,
            role=peer.role,
            cert_fingerprint=fingerprint,
            key=key_name[:_MAX_KEY_NAME],
            decision="released" if released else "refused",
            reason=reason,
            evidence=evidence,
            tee=tee,
        )
        if released:
            log.info("released key %r to %s (%s)", key_name, peer.party, peer.role)
        else:
            log.warning("refused key %r to %s (%s): %s", key_name, peer.party, peer.role, reason)
        return ReleaseOutcome(released, reason, int(record["seq"]), key)

    # -- gRPC -----------------------------------------------------------------------------
    def ReleaseKey(self, request: kb.ReleaseKeyRequest, context: grpc.ServicerContext) -> kb.ReleaseKeyReply:
        """Release ``request.key_name`` to the calling enrolled peer, or refuse with a reason."""
        peer = self._server.peer_of(context)  # aborts UNAUTHENTICATED for anyone not enrolled
        try:
            outcome = self.decide(peer, request.key_name)
        except OSError as e:
            log.error("audit log write failed; refusing to release anything: %s", e)
            context.abort(grpc.StatusCode.INTERNAL, "key broker cannot write its audit log; nothing released")
            raise  # unreachable: abort raises
        return kb.ReleaseKeyReply(
            released=outcome.released, key=outcome.key, reason=outcome.reason, audit_seq=outcome.audit_seq
        )

    # -- checkpoint records (rollback protection) -----------------------------------------
    def record_checkpoint(self, peer: EnrolledPeer, record: CheckpointRecord) -> RecordOutcome:
        """Record ``record`` as ``peer``'s latest checkpoint of its run, or refuse; audited either way.

        Refused for a peer whose role is not ``ps``, and for a record older than the run's latest
        (or the latest round with another digest). Raises OSError only when the audit entry
        cannot be written (then nothing is recorded).
        """
        refusal = ""
        if peer.role != CHECKPOINT_ROLE:
            refusal = f"role {peer.role!r} may not record checkpoints (only role {CHECKPOINT_ROLE!r})"
        outcome = self._audit.record_checkpoint(
            party=peer.party,
            role=peer.role,
            cert_fingerprint=certificate_fingerprint(peer.cert_pem),
            record=record,
            refusal=refusal,
        )
        if not outcome.recorded:
            log.warning(
                "refused checkpoint record from %s (%s): %s", escaped(peer.party), escaped(peer.role), outcome.reason
            )
        return outcome

    def RecordCheckpoint(self, request: kb.CheckpointRecord, context: grpc.ServicerContext) -> kb.RecordReply:
        """Record the calling parameter server's checkpoint (role ``ps`` only)."""
        peer = self._server.peer_of(context)  # aborts UNAUTHENTICATED for anyone not enrolled
        record = self._checkpoint_request(request.run_id, request.round, request.sha256, context)
        try:
            outcome = self.record_checkpoint(peer, record)
        except OSError as e:
            log.error("audit log write failed; recording nothing: %s", e)
            context.abort(grpc.StatusCode.INTERNAL, "key broker cannot write its audit log; nothing recorded")
            raise  # unreachable: abort raises
        if peer.role != CHECKPOINT_ROLE:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, outcome.reason)
        return kb.RecordReply(recorded=outcome.recorded, reason=outcome.reason, audit_seq=outcome.audit_seq)

    def LatestCheckpoint(
        self, request: kb.LatestCheckpointRequest, context: grpc.ServicerContext
    ) -> kb.LatestCheckpointReply:
        """The latest checkpoint the calling parameter server recorded for ``request.run_id``."""
        peer = self._server.peer_of(context)
        if peer.role != CHECKPOINT_ROLE:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {peer.role!r} may not look up checkpoints (only role {CHECKPOINT_ROLE!r})",
            )
        try:
            run_id = validate_run_id(request.run_id)
        except ConfigError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises
        record = self._audit.latest_checkpoint(peer.party, run_id)
        if record is None:
            return kb.LatestCheckpointReply(found=False)
        return kb.LatestCheckpointReply(
            found=True,
            record=kb.CheckpointRecord(run_id=record.run_id, round=record.round, sha256=record.sha256),
            audit_seq=record.audit_seq or 0,
        )

    @staticmethod
    def _checkpoint_request(run_id: str, round: int, sha256: bytes, context: grpc.ServicerContext) -> CheckpointRecord:
        """The record a peer sent, validated (sizes checked before use); aborts INVALID_ARGUMENT."""
        try:
            return CheckpointRecord(run_id, round, bytes(sha256))
        except ConfigError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises
