"""Constants and helpers shared by the key broker tests (imported by conftest and the tests)."""

from __future__ import annotations

from dataclasses import dataclass

from tdxfl.attestation.decisions import DecisionLog
from tdxfl.attestation.insecure_simulated import SimulatedVerifier
from tdxfl.attestation.policy import Policy
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.keybroker.keystore import Keystore
from tdxfl.wiring.keybroker import KeyBroker

GOOD = bytes.fromhex("11" * 48)  # the MRTD the keys are released to
OTHER = bytes.fromhex("22" * 48)  # enrolls (broker policy allows it) but no key policy does
BROKER_MRTD = bytes.fromhex("33" * 48)
PASSPHRASE = "correct horse battery staple"
FAST_N = 1 << 14  # cheapest scrypt cost derive_store_key accepts


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
