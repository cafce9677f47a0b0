"""RTMR arithmetic, the extension rule and the verifier's replay of an RTMR3 event log."""

from __future__ import annotations

import hashlib

import pytest

from tdxfl.attestation.eventlog import Extension, check_rtmr3_log, extend, plan_extension, replay
from tdxfl.errors import AttestationError

ZERO = bytes(48)
TASK = bytes(range(48))
OTHER = bytes([0xEE]) * 48


def test_extend_is_sha384_of_register_and_event() -> None:
    assert extend(ZERO, TASK) == hashlib.sha384(ZERO + TASK).digest()
    with pytest.raises(ValueError, match="48 bytes"):
        extend(ZERO, TASK[:32])


def test_replay_starts_from_zeros() -> None:
    assert replay([]) == ZERO
    assert replay([TASK, OTHER]) == extend(extend(ZERO, TASK), OTHER)


def test_plan_extends_a_fresh_register_once() -> None:
    once = extend(ZERO, TASK)
    assert plan_extension(ZERO, TASK) == Extension(True, (TASK,), once)
    # an earlier start of the same task in this boot: nothing to write, the same log
    assert plan_extension(once, TASK) == Extension(False, (TASK,), once)


def test_plan_leaves_a_register_with_unknown_events_alone() -> None:
    foreign = extend(ZERO, OTHER)
    assert plan_extension(foreign, TASK) == Extension(False, None, foreign)
    twice = extend(extend(ZERO, TASK), TASK)
    assert plan_extension(twice, TASK) == Extension(False, None, twice)


def test_log_that_replays_to_the_quote_is_accepted() -> None:
    check_rtmr3_log((TASK,), extend(ZERO, TASK), TASK)
    check_rtmr3_log((OTHER, TASK), replay([OTHER, TASK]), TASK)
    check_rtmr3_log((OTHER,), extend(ZERO, OTHER), None)  # a log without a task claim


def test_tampered_log_is_refused_naming_both_values() -> None:
    quoted = extend(ZERO, TASK)
    with pytest.raises(AttestationError) as err:
        check_rtmr3_log((OTHER,), quoted, OTHER)
    message = str(err.value)
    assert "does not replay to the quoted RTMR3" in message
    assert extend(ZERO, OTHER).hex() in message and quoted.hex() in message


def test_log_that_does_not_reach_the_quoted_value_is_refused() -> None:
    """Something extended RTMR3 after the logged events (or the log was truncated)."""
    with pytest.raises(AttestationError, match="1 event\\(s\\) give .* did not log it"):
        check_rtmr3_log((TASK,), replay([TASK, OTHER]), TASK)


def test_task_must_be_the_last_event() -> None:
    with pytest.raises(AttestationError) as err:
        check_rtmr3_log((TASK, OTHER), replay([TASK, OTHER]), TASK)
    assert f"claimed task digest {TASK.hex()} is not the last RTMR3 event (last event: {OTHER.hex()})" in str(err.value)
