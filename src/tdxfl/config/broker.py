"""The key broker's configuration file, ``broker.toml``, parsed and validated.

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

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxfl.attestation.policy import Policy
from tdxfl.config.federation import Attestation, parse_attestation
from tdxfl.errors import ConfigError
from tdxfl.transport.attested import split_address

__all__ = ["BrokerConfig", "load_broker_config", "parse_broker_config"]


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
        raise ConfigError('[enroll] must list the parties that may enroll: party = "role"')
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in enroll.items()):
        raise ConfigError('[enroll] entries must be party = "role" strings')
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
