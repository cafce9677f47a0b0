"""Check, before a party does anything slow, that every port it will listen on is free.

A party binds its ports only after fetching keys and loading its model; a port taken by another
process (a second PS or broker started by mistake) would show only then, or not at all where
the other process allowed port sharing (gRPC's servers set ``SO_REUSEPORT`` unless told not to,
and tdxfl's tell them not to). This binds each port once, without ``SO_REUSEPORT``, and lets go.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from tdxfl.errors import ConfigError

__all__ = ["check_ports_free"]


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_ports_free(addresses: Iterable[str]) -> None:
    """ConfigError naming the first of ``addresses`` (``HOST:PORT``; port 0 is skipped) whose
    port another process holds, or that cannot be bound here."""
    for address in addresses:
        host, port = _split(address)
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as e:
                raise ConfigError(f"cannot listen on {address}: {e.strerror} (is another party running?)") from None
