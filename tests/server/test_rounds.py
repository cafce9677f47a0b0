"""The PS's step synchronisation: quorum, timeouts, stale and duplicate updates."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tdxfl.core.records import RecordError, TensorSet
from tdxfl.server.rounds import DONE, FederationError, RoundState
from tdxfl.transport.tensors import to_wire

SPECS = TensorSet.from_arrays(["w"], [np.zeros(4, np.float32)]).specs


def update(value: float) -> TensorSet:
    return TensorSet(SPECS, [np.full(4, value, np.float32)])


def state(*workers: str) -> RoundState:
    s = RoundState(SPECS, "gradients")
    for w in workers:
        s.join(w)
    s.publish(0, to_wire("weights", 0, update(0.0)))
    return s


def test_waits_for_every_active_worker() -> None:
    s = state("a", "b")
    s.submit("a", "gradients", 0, update(1), 1.0, {"loss": 2.0})
    threading.Timer(0.3, lambda: s.submit("b", "gradients", 0, update(3), 1.0, {"loss": 4.0})).start()
    t0 = time.monotonic()
    r = s.collect(2, 10, fail_on_timeout=True, grace=0)
    assert 0.2 < time.monotonic() - t0 < 5
    assert sorted(r.contributors) == ["a", "b"] and r.metrics["loss"] == 3.0
    np.testing.assert_allclose(r.mean[0], 2.0)


def test_silent_worker_dropped_after_timeout_when_quorum_met() -> None:
    s = state("a", "b")
    s.submit("a", "gradients", 0, update(1), 1.0, {})
    r = s.collect(1, 0.3, fail_on_timeout=False, grace=0)
    assert r.contributors == ["a"] and "b" not in s.active


def test_timeout_fails_when_configured() -> None:
    s = state("a", "b")
    s.submit("a", "gradients", 0, update(1), 1.0, {})
    with pytest.raises(FederationError, match=r"no update from \['b'\]"):
        s.collect(1, 0.3, fail_on_timeout=True, grace=0)


def test_below_quorum_is_a_clear_error() -> None:
    s = state("a", "b", "c")
    s.submit("a", "gradients", 0, update(1), 1.0, {})
    with pytest.raises(FederationError, match="only 1 update.*quorum is 2"):
        s.collect(2, 0.2, fail_on_timeout=False, grace=0.2)


def test_stale_duplicate_and_wrong_kind_refused() -> None:
    s = state("a")
    with pytest.raises(RecordError, match="stale"):
        s.submit("a", "gradients", 5, update(1), 1.0, {})
    with pytest.raises(RecordError, match="expects 'gradients'"):
        s.submit("a", "weights", 0, update(1), 1.0, {})
    s.submit("a", "gradients", 0, update(1), 1.0, {})
    with pytest.raises(RecordError, match="already sent"):
        s.submit("a", "gradients", 0, update(1), 1.0, {})


def test_rejected_worker_is_not_waited_for() -> None:
    s = state("a", "b")
    s.submit("a", "gradients", 0, update(1), 1.0, {})
    with pytest.raises(RecordError):
        s.submit("b", "gradients", 0, update(float("nan")), 1.0, {})
    r = s.collect(2, 10, fail_on_timeout=True, grace=0)
    assert r.contributors == ["a"] and "b" in r.rejected


def test_wait_for_workers_times_out_clearly() -> None:
    s = RoundState(SPECS, "gradients")
    s.join("a")
    with pytest.raises(FederationError, match="only 1 of the 2 required workers joined"):
        s.wait_for_workers(2, 0.2)


def test_pullers_get_the_published_version_then_done() -> None:
    s = state("a")
    with s.sending("a", 0, 0.1, lambda: None) as none:
        assert none is None  # nothing newer than version 0 yet
    with s.sending("a", -1, 0.1, lambda: None) as got:
        assert got is not None and got.header.version == 0 and s.bytes_out == 16
    s.finish()
    with s.sending("a", 0, 5, lambda: None) as done:
        assert done is DONE


def test_retire_cancels_a_stalled_send_and_holds_new_pulls() -> None:
    s = state("a", "b")
    assert s.retire(5) == 0  # nothing in flight: returns at once
    s.publish(1, to_wire("weights", 1, update(1.0)))
    cancelled = threading.Event()

    def stalled_reader() -> None:
        with s.sending("a", 0, 5, cancelled.set):
            cancelled.wait(10)  # a send blocked until its link is closed

    reader = threading.Thread(target=stalled_reader)
    reader.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    assert s.retire(0.3) == 1
    assert cancelled.is_set() and 0.25 < time.monotonic() - t0 < 5
    reader.join(5)
    got: list[int] = []

    def puller() -> None:
        with s.sending("b", 0, 5, lambda: None) as model:
            got.append(model.header.version if model is not None else -2)

    t = threading.Thread(target=puller)
    t.start()
    time.sleep(0.2)
    assert not got  # the retired version is not handed out: its weights may be changing
    s.publish(2, to_wire("weights", 2, update(2.0)))
    t.join(5)
    assert got == [2]
