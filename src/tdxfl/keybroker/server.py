"""``broker.toml`` and the running key broker.

Example (see ``examples/broker.toml``)::

    [broker]
    name = "keybroker"                    # our party name: clients pass it as broker_party
    address = "0.0.0.0:7443"              # mutual RA-TLS port (KeyBroker service)
    enroll_address = "0.0.0.0:7444"       # enrollment port (default: address port + 1)
    keystore = "/var/lib/tdxfl/broker/keystore"
    audit_log = "/var/lib/tdxfl/broker/audit.jsonl"
    decisions_log = ""                    # default: attestation.jsonl beside the audit log
    key_file = ""                         # protect the keystore with this key file instead of a passphrase

    [attestation]                         # the broker's own evidence, as in a federation file
    mode = "tdx"                          # or "simulated" (development only)

    [enroll]                              # who may enroll, and as which role
    ps = "ps"
    worker-1 = "worker"

    [policy]                              # what every enrolling TD must meet (each key adds its own)
    tee = ["tdx"]
    mrtd = ["..."]

Relative paths are resolved against the directory of ``broker.toml``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.interfaces import Attester, Verifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.config import Attestation, parse_attestation
from tdxfl.errors import ConfigError
from tdxfl.keybroker.audit import AuditLog
from tdxfl.keybroker.keystore import Keystore
from tdxfl.keybroker.service import KeyBrokerService
from tdxfl.transport.attested import AttestedServer, split_address
from tdxfl.transport.proto import keybroker_pb2_grpc as kb_grpc

log = logging.getLogger(__name__)

__all__ = ["BrokerConfig", "KeyBroker", "load_broker_config", "parse_broker_config", "run_keybroker", "start_keybroker"]


@dataclass(frozen=True)
class BrokerConfig:
    """A parsed ``broker.toml``."""

    name: str
    address: str
    enroll_address: str
    keystore: Path
    audit_log: Path
    decisions_log: Path
    attestation: Attestation
    enroll: Mapping[str, str]
    policy: Policy
    key_file: Path | None = None


def parse_broker_config(doc: Mapping[str, Any], base: Path = Path(".")) -> BrokerConfig:
    """Validate a parsed ``broker.toml`` document; relative paths are taken from ``base``."""
    unknown = set(doc) - {"broker", "attestation", "enroll", "policy"}
    if unknown:
        raise ConfigError(f"unknown top-level keys in broker config: {', '.join(sorted(unknown))}")
    b = doc.get("broker")
    if not isinstance(b, Mapping):
        raise ConfigError("[broker] is required")
    allowed = {"name", "address", "enroll_address", "keystore", "audit_log", "decisions_log", "key_file"}
    unknown = set(b) - allowed
    if unknown:
        raise ConfigError(f"unknown keys in [broker]: {', '.join(sorted(unknown))}")
    for key in allowed & set(b):
        if not isinstance(b[key], str):
            raise ConfigError(f"broker.{key} must be a string")
    for key in ("address", "keystore", "audit_log"):
        if not b.get(key):
            raise ConfigError(f"broker.{key} is required")
    try:
        host, port = split_address(b["address"])
        enroll_address = b.get("enroll_address") or f"{host}:{port + 1}"
        split_address(enroll_address)
    except ValueError as e:
        raise ConfigError(f"[broker]: {e}") from None

    def path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    audit_log = path(b["audit_log"])
    enroll = doc.get("enroll", {})
    if not isinstance(enroll, Mapping) or not enroll:
        raise ConfigError("[enroll] must list the parties that may enroll: party = \"role\"")
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in enroll.items()):
        raise ConfigError("[enroll] entries must be party = \"role\" strings")
    if "policy" not in doc:
        raise ConfigError("[policy] is required: what every enrolling TD must meet")
    try:
        policy = Policy.from_dict(doc["policy"])
    except ConfigError as e:
        raise ConfigError(f"[policy]: {e}") from e
    return BrokerConfig(
        name=b.get("name") or "keybroker",
        address=b["address"],
        enroll_address=enroll_address,
        keystore=path(b["keystore"]),
        audit_log=audit_log,
        decisions_log=path(b["decisions_log"]) if b.get("decisions_log") else audit_log.with_name("attestation.jsonl"),
        attestation=parse_attestation(doc.get("attestation", {})),
        enroll=dict(enroll),
        policy=policy,
        key_file=path(b["key_file"]) if b.get("key_file") else None,
    )


def load_broker_config(path: str | os.PathLike[str]) -> BrokerConfig:
    """Read and validate ``broker.toml``."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"broker config {p} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"broker config {p} is not valid TOML: {e}") from None
    return parse_broker_config(doc, p.parent)


class KeyBroker:
    """A started key broker: its AttestedServer, service, audit log and decisions."""

    def __init__(self, config: BrokerConfig, server: AttestedServer, service: KeyBrokerService, audit: AuditLog) -> None:
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
) -> KeyBroker:
    """Start serving ``keystore`` per ``config``; ``attester``/``verifiers`` default from ``[attestation]``."""
    from tdxfl.wiring.party import make_attester, verifiers_for

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
    keystore = Keystore.open(
        config.keystore, passphrase=passphrase if key_file is None else None, key_file=key_file
    )
    broker = start_keybroker(config, keystore)
    entries, head = broker.audit.head
    log.warning(
        "key broker %s serving %d key(s) on %s (enrollment %s); audit log %s has %d entries, head %s",
        config.name, len(keystore.list()), config.address, config.enroll_address, config.audit_log, entries, head,
    )
    done = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    try:
        done.wait()
    finally:
        broker.stop(grace=2.0)
