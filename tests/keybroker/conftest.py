"""Fixtures for the key broker tests: a keystore, simulated TDs, and a broker on loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kb_support import BROKER_MRTD, FAST_N, GOOD, OTHER, PASSPHRASE, Running, sim_policy
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd, SimulatedVerifier
from tdxfl.attestation.policy import Policy
from tdxfl.config.broker import parse_broker_config
from tdxfl.keybroker.keystore import Keystore
from tdxfl.wiring.keybroker import start_keybroker


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    """A passphrase keystore with keys: model (ps+worker), ps-only, tdx-only (real TDX required)."""
    ks = Keystore.create(tmp_path / "broker" / "keystore", passphrase=PASSPHRASE, scrypt_n=FAST_N)
    ks.new_key("model", sim_policy(GOOD), ["ps", "worker"])
    ks.new_key("ps-only", sim_policy(GOOD), ["ps"])
    ks.new_key("tdx-only", Policy.from_dict({"tee": ["tdx"], "mrtd": "any"}), ["ps", "worker"])
    return ks


@pytest.fixture
def broker(tmp_path: Path, keystore: Keystore) -> Iterator[Running]:
    """A broker (simulated TD) serving ``keystore``; enrollment admits GOOD and OTHER TDs, DEBUG too."""
    # Port 0: the kernel picks free ports at bind time (no race with other tests picking ports).
    address = enroll = "127.0.0.1:0"
    doc = {
        "broker": {
            "name": "keybroker",
            "address": address,
            "enroll_address": enroll,
            "keystore": "broker/keystore",
            "audit_log": "broker/audit.jsonl",
        },
        "attestation": {"mode": "simulated"},
        "enroll": {"ps": "ps", "worker-1": "worker", "worker-2": "worker"},
        # Deliberately looser than the keys: each key's own policy must do the refusing.
        "policy": {"tee": ["simulated"], "mrtd": [GOOD.hex(), OTHER.hex()], "allow_debug": True},
    }
    config = parse_broker_config(doc, tmp_path)
    running = start_keybroker(
        config, keystore, attester=SimulatedAttester(SimulatedTd(mrtd=BROKER_MRTD)), verifiers=[SimulatedVerifier()]
    )
    try:
        ports = running.server.port, running.server.enroll_port
        yield Running(running, keystore, f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}")
    finally:
        running.stop(grace=None)


@pytest.fixture
def td() -> Callable[..., SimulatedAttester]:
    """A simulated TD's attester: ``td(mrtd=GOOD, debug=False)``."""

    def make(mrtd: bytes = GOOD, debug: bool = False) -> SimulatedAttester:
        return SimulatedAttester(SimulatedTd(mrtd=mrtd, debug=debug))

    return make
