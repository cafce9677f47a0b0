"""Shared helpers for the tdxfl benchmark suite (bench/ only; nothing here is imported by src/).

Every benchmark process imports this first: it quiets gRPC / TF / the simulated-TD warning, and
offers the federation-document builder (a copy of tests/conftest.py's ``federation_doc`` without
pytest), tensor-set synthesis from cached specs, timing helpers and subprocess helpers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TDXFL_MODEL_SECRET", "benchmark secret, not for production")
logging.basicConfig(level=logging.ERROR)

import numpy as np  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
RESNET50_SPECS = BENCH_DIR / "resnet50_cifar10_specs.json"
MB = 1e6


def log(msg: str) -> None:
    """Progress goes to stderr; stdout is reserved for the JSON result lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def rss_kb(field: str = "VmRSS") -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_hwm() -> bool:
    """Reset this process's VmHWM to the current RSS (Linux >= 4.0, clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- tensor sets ------------------------------------------------------------------------------
def load_specs(path: Path = RESNET50_SPECS) -> tuple[list[Any], list[bool]]:
    """(TensorSpecs, trainable mask) from a cached specs JSON (see resnet50_cifar10_specs.json)."""
    from tdxfl.engine.records import TensorSpec

    doc = json.loads(Path(path).read_text())
    specs = [TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in doc["tensors"]]
    return specs, [bool(t.get("trainable", True)) for t in doc["tensors"]]


def synthetic_specs(params: int, *, tensors: int = 20) -> list[Any]:
    """About ``params`` float32 parameters in ``tensors`` tensors (for small-model runs)."""
    from tdxfl.engine.records import TensorSpec

    per = max(1, params // tensors)
    rows = max(1, int(per**0.5))
    return [TensorSpec(f"layer{i}/kernel", "float32", (rows, per // rows)) for i in range(tensors)]


def random_set(specs: list[Any], seed: int, scale: float = 1.0) -> Any:
    """A TensorSet of standard-normal float32 values (times ``scale``) with these specs."""
    from tdxfl.engine.records import TensorSet

    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        a = rng.standard_normal(s.shape, dtype=np.float32)
        if scale != 1.0:
            a *= np.float32(scale)
        arrays.append(a.astype(s.dtype, copy=False))
    return TensorSet(list(specs), arrays)


def nbytes(specs: list[Any]) -> int:
    return sum(s.nbytes for s in specs)


# -- federations -----------------------------------------------------------------------------
def free_port() -> int:
    """A loopback port free now: the bench's parties run in other processes, whose addresses go
    into the federation file before they start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_fleet(fed: Any, ctx: Any, specs: list[Any]) -> Any:
    """The shipped PS fleet (``tdxfl.wiring.ps.attested_fleet``) for sync-gradients updates of ``specs``."""
    from tdxfl.engine.optimizers import SGD
    from tdxfl.engine.strategy import SyncGradients
    from tdxfl.wiring.ps import attested_fleet

    return attested_fleet(fed, ctx, specs, SyncGradients(SGD(0.01), [True] * len(specs)))


#: Simulated MRTD pinned for every bench party. The default ("auto") hashes the installed tdxfl
#: sources when each process starts, so an edit to src/ between the PS's start and a worker's
#: start (others work in this tree concurrently) would make the PS refuse the worker.
BENCH_MRTD = hashlib.sha384(b"tdxfl bench simulated TD").hexdigest()


def federation_doc(workdir: Path, workers: list[str], **sections: dict[str, Any]) -> dict[str, Any]:
    """A federation document (1 PS + ``workers``, simulated TDs), as tests/conftest.py builds it,
    with the simulated MRTD pinned (``BENCH_MRTD``) instead of hashed from the sources."""
    mrtd = BENCH_MRTD
    doc: dict[str, Any] = {
        "federation": {"name": "bench-fed"},
        "party": [
            {
                "name": "ps",
                "role": "ps",
                "address": f"127.0.0.1:{free_port()}",
                "enroll_address": f"127.0.0.1:{free_port()}",
                "data_address": f"127.0.0.1:{free_port()}",
            },
            *({"name": w, "role": "worker"} for w in workers),
        ],
        "training": {
            "model": "mlp",
            "dataset": "digits",
            "rounds": 1,
            "steps_per_round": 1,
            "batch_size": 32,
            "optimizer": "adam",
            "learning_rate": 0.01,
        },
        "faults": {"step_timeout_s": 300.0, "join_timeout_s": 120.0, "connect_retries": 40, "connect_backoff_s": 0.1},
        "attestation": {"mode": "simulated", "simulated": {"mrtd": mrtd}},
        "policy": {
            "workers": {"tee": ["simulated"], "mrtd": [mrtd]},
            "ps": {"tee": ["simulated"], "mrtd": [mrtd]},
        },
        "output": {"dir": str(workdir)},
    }
    for name, table in sections.items():
        doc[name] = {**doc.get(name, {}), **table}
    return doc


def write_federation(workdir: Path, workers: list[str], **sections: dict[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "federation.json"
    path.write_text(json.dumps(federation_doc(workdir, workers, **sections)))
    return path


def read_federation(path: Path | str) -> Any:
    from tdxfl.config import parse_federation

    return parse_federation(json.loads(Path(path).read_text()))


def wait_joined(rounds: Any, count: int, procs: list[Any], timeout: float) -> None:
    """``rounds.wait_for_workers`` that gives up as soon as a worker process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rounds.wait_for_workers(count, 0.5)
            return
        except Exception:  # FederationError: not yet
            dead = [p for p in procs if p.poll() not in (None, 0)]
            if dead:
                raise RuntimeError(f"a worker process exited with {dead[0].returncode} before joining") from None
            if time.monotonic() > deadline:
                raise


def wait_port(address: str, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    import socket

    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- subprocesses ----------------------------------------------------------------------------
def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def spawn(module: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """``python -m bench.<module> args...`` in the repo root (stdout/stderr inherited unless given)."""
    return subprocess.Popen([PYTHON, "-m", f"bench.{module}", *args], cwd=REPO, env=bench_env(), **kw)


def run_json(module: str, *args: str, timeout: float = 600.0, prefix: tuple[str, ...] | list[str] = ()) -> Any:
    """Run ``python -m bench.<module> args...`` (after ``prefix``, e.g. ``ip netns exec NAME``)
    and parse the last stdout line as JSON."""
    proc = subprocess.run(
        [*prefix, PYTHON, "-m", f"bench.{module}", *args],
        cwd=REPO,
        env=bench_env(),
        stdout=subprocess.PIPE,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.{module} {' '.join(args)} exited with {proc.returncode}")
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def result(
    rid: str,
    value: float | None,
    baseline: float | None,
    target: float | None,
    unit: str,
    *,
    ok: bool,
    ratio: float | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """One result record; ``ratio`` defaults to value / baseline."""
    if ratio is None and value is not None and baseline:
        ratio = value / baseline
    out: dict[str, Any] = {
        "id": rid,
        "value": _round(value),
        "baseline": _round(baseline),
        "ratio": _round(ratio),
        "target": target,
        "unit": unit,
        "ok": bool(ok),
    }
    if detail:
        out["detail"] = {k: _round(v) for k, v in detail.items()}
    return out


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


class PlainStream:
    """``tdxfl.transport.link.ByteStream`` over a plaintext socket: TLS and attestation off.

    Bench-only, for measuring what they cost (P1b, P2's insecure comparisons); never a way to run
    a federation.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def sendall(self, data: memoryview) -> None:
        self.sock.sendall(data)

    def send_many(self, views: Any) -> None:
        for view in views:
            self.sock.sendall(view)

    def recv_into(self, view: memoryview) -> None:
        from tdxfl.transport.link import LinkError

        got = 0
        while got < len(view):
            n = self.sock.recv_into(view[got:], min(len(view) - got, 4 << 20))
            if not n:
                raise LinkError("connection closed by peer")
            got += n

    def close(self) -> None:
        self.sock.close()


def serve_plain_links(listener: Any, serve: Any) -> None:
    """Accept plaintext tensor links forever; the first message (an EnrollRequest) names the party."""
    import socket
    import threading

    from tdxfl.transport.link import LinkError, TensorLink
    from tdxfl.transport.proto import tdxfl_pb2 as pb

    def handle(sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = TensorLink(PlainStream(sock))
        try:
            serve(link.recv(pb.EnrollRequest).party, link)
        except LinkError:
            pass
        finally:
            link.close()

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def plain_link(address: tuple[str, int], party: str) -> Any:
    """A plaintext tensor link to ``serve_plain_links`` as ``party`` (bench-only)."""
    import socket

    from tdxfl.transport.link import TensorLink
    from tdxfl.transport.proto import tdxfl_pb2 as pb

    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    link = TensorLink(PlainStream(sock))
    link.send(pb.EnrollRequest(party=party))  # names the party: no certificate on this link
    return link
