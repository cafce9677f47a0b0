"""The PS's bounded receive slots."""

from __future__ import annotations

import threading

import pytest

from tdxfl.engine.records import TensorSpec
from tdxfl.server.service import SlotTimeout, StagingPool

SPECS = [TensorSpec("w", "float32", (4,))]


def test_slots_bound_concurrent_updates_and_buffers_are_reused() -> None:
    pool = StagingPool(1, transfer_timeout=0.3)
    with pool.slot(SPECS, lambda: None) as first, pytest.raises(SlotTimeout, match="server busy"):
        with pool.slot(SPECS, lambda: None):
            pass
    with pool.slot(SPECS, lambda: None) as second:  # the slot came back, with its buffer
        assert second is first


def test_stalled_transfer_is_cancelled_and_frees_its_slot() -> None:
    pool = StagingPool(1, transfer_timeout=0.2)
    cancelled = threading.Event()
    with pool.slot(SPECS, cancelled.set):
        assert cancelled.wait(10)  # the watchdog cancels the transfer that holds the slot
    got = threading.Event()

    def take() -> None:
        with pool.slot(SPECS, lambda: None):
            got.set()

    threading.Thread(target=take).start()
    assert got.wait(2)
