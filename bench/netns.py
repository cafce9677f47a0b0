"""A network namespace whose loopback is shaped to a link rate, for measuring where the wire,
not the CPU, is the limit (P1b-wire). Needs root and iproute2 (``ip``, ``tc``); the traffic
never leaves the namespace."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextlib.contextmanager
def shaped_loopback(rate_mbit: int) -> Iterator[list[str]]:
    """A fresh namespace whose ``lo`` carries at most ``rate_mbit`` Mbit/s (token bucket, all
    flows together: a server's NIC); yields the command prefix that runs a program inside it."""
    name = f"tdxfl-bench-{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        burst = max(256 << 10, rate_mbit * 1_000_000 // 8 // 100)  # 10 ms worth of bytes
        _run(
            "tc",
            "-n",
            name,
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "tbf",
            "rate",
            f"{rate_mbit}mbit",
            "burst",
            str(burst),
            "latency",
            "200ms",
        )
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
