"""Fixtures for the key broker tests: a keystore, simulated TDs, and a broker on loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kb_support import FAST_N, GOOD, PASSPHRASE, Running, sim_policy, start_broker
from tdxfl.attestation.insecure_simulated import SimulatedAttester, SimulatedTd
from tdxfl.attestation.policy import Policy
from tdxfl.keybroker.keystore import Keystore


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
    running = start_broker(tmp_path, keystore)
    try:
        yield running
    finally:
        running.broker.stop(grace=None)


@pytest.fixture
def td() -> Callable[..., SimulatedAttester]:
    """A simulated TD's attester: ``td(mrtd=GOOD, debug=False)``."""

    def make(mrtd: bytes = GOOD, debug: bool = False) -> SimulatedAttester:
        return SimulatedAttester(SimulatedTd(mrtd=mrtd, debug=debug))

    return make
