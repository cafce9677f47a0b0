"""The key broker, wired: its keystore and audit log, its attester and verifiers, the attested
server with the release service; ``run_keybroker`` serves ``broker.toml`` until stopped."""

from __future__ import annotations

import logging
import os
import signal
import threading

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.interfaces import Attester, Verifier
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.config.broker import BrokerConfig, load_broker_config
from tdxfl.keybroker.audit import AuditLog
from tdxfl.keybroker.keystore import Keystore
from tdxfl.keybroker.service import KeyBrokerService
from tdxfl.transport.attested import AttestedServer
from tdxfl.transport.proto import keybroker_pb2_grpc as kb_grpc
from tdxfl.wiring.party import make_attester, verifiers_for

__all__ = ["KeyBroker", "run_keybroker", "start_keybroker"]

log = logging.getLogger(__name__)


class KeyBroker:
    """A started key broker: its AttestedServer, service, audit log and decisions."""

    def __init__(
        self, config: BrokerConfig, server: AttestedServer, service: KeyBrokerService, audit: AuditLog
    ) -> None:
        self.config = config
        self.server = server
        self.service = service
        self.audit = audit

    @property
    def decisions(self) -> DecisionLog:
        """Every attestation and release decision the broker made."""
        return self.service.decisions

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving."""
        self.server.stop(grace)


def start_keybroker(
    config: BrokerConfig,
    keystore: Keystore,
    *,
    attester: Attester | None = None,
    verifiers: list[Verifier] | None = None,
    task_digest: bytes | None = None,
) -> KeyBroker:
    """Start serving ``keystore`` per ``config``; ``attester``/``verifiers`` default from ``[attestation]``;
    the broker's evidence claims ``task_digest`` when given."""
    attester = attester or make_attester(config.attestation)
    verifiers = verifiers if verifiers is not None else verifiers_for(config.policy, config.attestation)
    config.decisions_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    decisions = DecisionLog(config.decisions_log)
    audit = AuditLog(config.audit_log, mac_key=keystore.audit_mac_key())
    enroll = dict(config.enroll)
    server = AttestedServer(
        config.name,
        attester,
        PeerVerifier(config.name, config.policy, verifiers, decisions),
        config.address,
        config.enroll_address,
        roles=enroll.get,
        task_digest=task_digest,
    )
    service = KeyBrokerService(server, keystore, audit, verifiers, decisions)
    kb_grpc.add_KeyBrokerServicer_to_server(service, server.main)
    server.start()
    return KeyBroker(config, server, service, audit)


def run_keybroker(
    config_path: str | os.PathLike[str],
    *,
    passphrase: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the broker described by ``config_path`` until SIGINT/SIGTERM (or ``stop`` is set).

    The keystore is opened with ``key_file`` (else ``broker.key_file``) when one is named,
    otherwise with ``passphrase``. Raises ConfigError (an invalid ``broker.toml``, a missing
    passphrase or key file), WrongKey or SealedFileError (the keystore cannot be opened), or
    AuditChainError (the audit log was tampered with).
    """
    config = load_broker_config(config_path)
    key_file = key_file or config.key_file
    keystore = Keystore.open(config.keystore, passphrase=passphrase if key_file is None else None, key_file=key_file)
    broker = start_keybroker(config, keystore)
    entries, head = broker.audit.head
    log.warning(
        "key broker %s serving %d key(s) on %s (enrollment %s); audit log %s has %d entries, head %s",
        config.name,
        len(keystore.list()),
        config.address,
        config.enroll_address,
        config.audit_log,
        entries,
        head,
    )
    done = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    try:
        done.wait()
    finally:
        broker.stop(grace=2.0)
