"""Constants and helpers shared by the key broker tests (imported by conftest and the tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.config.broker import parse_broker_config
from tdxfl.keybroker.client import KeyBrokerClient
from tdxfl.keybroker.keystore import Keystore
from tdxfl.wiring.keybroker import KeyBroker, start_keybroker

GOOD = bytes.fromhex("11" * 48)  # the MRTD the keys are released to
OTHER = bytes.fromhex("22" * 48)  # enrolls (broker policy allows it) but no key policy does
BROKER_MRTD = bytes.fromhex("33" * 48)
PASSPHRASE = "correct horse battery staple"
FAST_N = 1 << 14  # cheapest scrypt cost derive_store_key accepts
ENROLL = {"ps": "ps", "worker-1": "worker", "worker-2": "worker"}


def sim_policy(*mrtds: bytes, **extra: object) -> Policy:
    """A simulated-TD policy pinning ``mrtds``."""
    return Policy.from_dict({"tee": ["simulated"], "mrtd": [m.hex() for m in mrtds], **extra})


@dataclass
class Running:
    """A started broker and what clients need to reach and attest it."""

    broker: KeyBroker
    keystore: Keystore
    address: str
    enroll_address: str

    def broker_verifier(self, me: str = "client") -> PeerVerifier:
        """The policy a client applies to the broker's TD."""
        return PeerVerifier(me, sim_policy(BROKER_MRTD), [SimulatedVerifier()], DecisionLog())

    def client(self, party: str = "ps", role: str = "ps", mrtd: bytes = GOOD, **options: Any) -> KeyBrokerClient:
        """A session with this broker as ``party`` in ``role`` from a simulated TD with ``mrtd``
        (no retries unless ``options`` say so)."""
        options = {"retries": 0, "timeout": 10.0, **options}
        attester = SimulatedAttester(SimulatedTd(mrtd=mrtd))
        return KeyBrokerClient(
            party, role, attester, self.broker_verifier(party), self.address, self.enroll_address, **options
        )


def broker_doc(address: str = "127.0.0.1:0", enroll_address: str = "127.0.0.1:0", **broker: Any) -> dict[str, Any]:
    """A broker.toml document (simulated TD) with state under ``broker/``; enrollment admits GOOD
    and OTHER TDs, DEBUG too, as ``ENROLL``; ``broker`` adds or replaces ``[broker]`` keys."""
    return {
        "broker": {
            "name": "keybroker",
            "address": address,
            "enroll_address": enroll_address,
            "keystore": "broker/keystore",
            "audit_log": "broker/audit.jsonl",
            **broker,
        },
        "attestation": {"mode": "simulated"},
        "enroll": dict(ENROLL),
        # Deliberately looser than the keys: each key's own policy must do the refusing.
        "policy": {"tee": ["simulated"], "mrtd": [GOOD.hex(), OTHER.hex()], "allow_debug": True},
    }


def start_broker(base: Path, keystore: Keystore, doc: Mapping[str, Any] | None = None) -> Running:
    """Start a broker (in this process, real gRPC on loopback) serving ``keystore`` per ``doc``
    (default :func:`broker_doc`: port 0, the kernel picks free ports at bind time)."""
    config = parse_broker_config(doc or broker_doc(), base)
    running = start_keybroker(
        config, keystore, attester=SimulatedAttester(SimulatedTd(mrtd=BROKER_MRTD)), verifiers=[SimulatedVerifier()]
    )
    ports = running.server.port, running.server.enroll_port
    return Running(running, keystore, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}")
