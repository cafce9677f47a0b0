"""Admission to the PS's bounded receive slots."""

from __future__ import annotations

import threading
import time

import pytest

from tdxfl.core.records import TensorSpec
from tdxfl.server.service import StagingPool
from tdxfl.transport.tensors import StreamError

SPECS = [TensorSpec("w", "float32", (4,))]


class Context:
    def __init__(self) -> None:
        self.cancelled = False

    def is_active(self) -> bool:
        return not self.cancelled

    def cancel(self) -> None:
        self.cancelled = True


def test_admission_bounds_concurrent_pushes() -> None:
    pool = StagingPool(1, transfer_timeout=0.5)
    assert pool.admit("a", Context())
    assert pool.admit("a", Context())  # asking twice holds one grant
    with pool.assembler("a", SPECS, Context()) as asm:  # a pushes with its grant
        asm.feed(b"\x00" * 16)
        assert not pool.admit("b", Context())  # the only slot is busy
    assert pool.admit("b", Context())  # a's push returned the slot


def test_unused_grant_lapses() -> None:
    pool = StagingPool(1, transfer_timeout=0.3)
    assert pool.admit("a", Context())
    time.sleep(0.5)
    assert pool.admit("b", Context())


def test_push_without_admission_waits_for_a_slot() -> None:
    pool = StagingPool(1, transfer_timeout=0.3)
    with pool.assembler("a", SPECS, Context()):
        with pytest.raises(StreamError, match="server busy"):
            with pool.assembler("old-client", SPECS, Context()):
                pass


def test_stalled_stream_is_cancelled() -> None:
    pool = StagingPool(1, transfer_timeout=0.2)
    ctx = Context()
    with pool.assembler("a", SPECS, ctx):
        time.sleep(0.4)
    assert ctx.cancelled
    done = threading.Event()
    threading.Thread(target=lambda: done.set() if pool.admit("b", Context()) else None).start()
    assert done.wait(2)
