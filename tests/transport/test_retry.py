"""Backoff retries: unreachable peers are retried, refusals never are."""

from __future__ import annotations

import pytest

from tdxfl.errors import AttestationRefused, Unavailable
from tdxfl.transport.retry import with_backoff


def test_retries_transient_errors_then_succeeds() -> None:
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not up yet")
        return "ok"

    slept: list[float] = []
    assert with_backoff(attempt, what="peer", retries=5, backoff_s=0.5, sleep=slept.append) == "ok" and len(calls) == 3
    assert slept == [0.5, 1.0]  # exponential backoff


def test_gives_up_with_a_clear_error() -> None:
    def attempt() -> None:
        raise ConnectionRefusedError("down")

    slept: list[float] = []
    with pytest.raises(Unavailable, match="peer unreachable after 4 attempts"):
        with_backoff(attempt, what="peer", retries=3, backoff_s=4.0, max_backoff_s=10.0, sleep=slept.append)
    assert slept == [4.0, 8.0, 10.0]  # capped


@pytest.mark.parametrize("error", [AttestationRefused("we refused ps: MRTD"), PermissionError("denied")])
def test_refusals_are_not_retried(error: Exception) -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        with_backoff(attempt, what="peer", retries=5, backoff_s=0.01, sleep=lambda s: None)
    assert len(calls) == 1
