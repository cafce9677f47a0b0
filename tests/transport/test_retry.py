"""Backoff retries: unreachable peers are retried, refusals never are."""

from __future__ import annotations

import pytest

from tdxfl.transport.attested import AttestationRefused
from tdxfl.transport.retry import with_backoff


def test_retries_transient_errors_then_succeeds() -> None:
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not up yet")
        return "ok"

    assert with_backoff(attempt, what="peer", retries=5, backoff_s=0.01) == "ok" and len(calls) == 3


def test_gives_up_with_a_clear_error() -> None:
    def attempt() -> None:
        raise ConnectionRefusedError("down")

    with pytest.raises(ConnectionError, match="peer unreachable after 3 attempts"):
        with_backoff(attempt, what="peer", retries=2, backoff_s=0.01)


@pytest.mark.parametrize("error", [AttestationRefused("we refused ps: MRTD"), PermissionError("denied")])
def test_refusals_are_not_retried(error: Exception) -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        with_backoff(attempt, what="peer", retries=5, backoff_s=0.01)
    assert len(calls) == 1
