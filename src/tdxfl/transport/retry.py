"""Retrying a connection attempt with exponential backoff (one policy for every client)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from tdxfl.engine.fleet import PROGRESS_LOGGER
from tdxfl.errors import LinkError, Unavailable

progress = logging.getLogger(PROGRESS_LOGGER)
T = TypeVar("T")
TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def is_transient(error: Exception) -> bool:
    """True for errors worth retrying: refused/reset connections, timeouts, broken links,
    transient gRPC statuses."""
    if isinstance(error, grpc.RpcError):
        return isinstance(error, grpc.Call) and error.code() in TRANSIENT_CODES
    return isinstance(error, (ConnectionError, TimeoutError, LinkError))


def with_backoff(
    attempt: Callable[[], T],
    *,
    what: str,
    retries: int,
    backoff_s: float,
    max_backoff_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``attempt`` until it succeeds; on a transient error ``sleep`` (doubling from
    ``backoff_s`` up to ``max_backoff_s``) and try again, at most ``retries`` more times.

    Non-transient errors propagate at once; after the last try raises Unavailable naming
    ``what`` and the last error.
    """
    delay = backoff_s
    for n in range(retries + 1):
        try:
            return attempt()
        except (OSError, grpc.RpcError, LinkError) as e:
            if not is_transient(e):
                raise
            if n == retries:
                raise Unavailable(f"{what} unreachable after {retries + 1} attempts: {e}") from e
            progress.info("%s unreachable (%s); retry %d/%d in %.1fs", what, type(e).__name__, n + 1, retries, delay)
            sleep(delay)
            delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")
