"""Training end to end in one process (PS and workers in threads, real attested gRPC and tensor links)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tdxfl.client.connection import PsEndpoint, connect_to_ps
from tdxfl.config import Federation
from tdxfl.engine.records import TensorSet
from tdxfl.engine.worker import WorkerResult
from tdxfl.errors import LinkError
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.tensors import to_wire
from tdxfl.wiring.party import model_key, party_context
from tdxfl.wiring.ps import ParameterServer, PsResult
from tdxfl.wiring.worker import run_worker

GRADIENTS = pb.TENSOR_KIND_GRADIENTS


def start(fn: Callable[[], Any], out: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = fn()
        except BaseException as e:  # surfaced by the test's assertions
            out[key] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def start_ps(fed: Federation, out: dict[str, Any]) -> tuple[Federation, threading.Thread]:
    """Set up the PS (its ports bound: port 0 in the file), serve it in a thread; the federation
    as workers see it (the PS's bound addresses)."""
    ps = ParameterServer(fed, party_context(fed, "ps"), live=False)
    a = ps.addresses
    return fed.with_ps_addresses(a.address, a.enroll_address, a.data_address), start(ps.run, out, "ps")


def run_federation(fed: Federation, workers: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fed, ps = start_ps(fed, out)
    threads = [start(lambda w=w: run_worker(fed, party_context(fed, w)), out, w) for w in workers]
    ps.join(240)
    for t in threads:
        t.join(30)
    return out


def test_sync_gradients_trains_and_seals_checkpoints(make_federation: Callable[..., Federation]) -> None:
    fed = make_federation(training={"rounds": 3, "steps_per_round": 15})
    out = run_federation(fed, ["worker-1", "worker-2"])
    result = out["ps"]
    assert isinstance(result, PsResult), result
    assert result.rounds == 3 and result.accuracy > 0.6
    for w in ("worker-1", "worker-2"):
        assert isinstance(out[w], WorkerResult) and out[w].steps == 45 and out[w].rejected == 0
    workdir = party_context(fed, "ps").workdir
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"accuracy"' in lines[0]
    assert (workdir / "training.png").stat().st_size > 1000
    sealed = (workdir / "checkpoints" / "final.sealed").read_bytes()
    assert sealed.startswith(b"TDXFLSEAL") and b"mlp/" not in sealed


def test_fedavg_trains(make_federation: Callable[..., Federation]) -> None:
    fed = make_federation(training={"mode": "fedavg", "rounds": 3, "steps_per_round": 20, "learning_rate": 0.01})
    out = run_federation(fed, ["worker-1", "worker-2"])
    result = out["ps"]
    assert isinstance(result, PsResult), result
    assert result.accuracy > 0.6
    assert out["worker-1"].steps == 3


def test_garbage_updates_are_rejected_and_honest_worker_keeps_training(
    make_federation: Callable[..., Federation],
) -> None:
    """worker-2 is attested but malicious: malformed, wrong-shape and NaN updates are refused."""
    fed = make_federation(training={"rounds": 2, "steps_per_round": 10}, faults={"quorum": 1, "step_timeout_s": 3.0})
    out: dict[str, Any] = {}
    fed, ps = start_ps(fed, out)
    ctx = party_context(fed, "worker-2")
    p = fed.ps
    rogue = connect_to_ps(  # the rogue joins first: the PS must deal with it
        "worker-2",
        ctx.attester,
        ctx.peer_verifier(fed.policy_for("ps")),
        PsEndpoint(p.name, p.address, p.enroll_address, p.data_address),
        digest=fed.training_digest(ctx.task_digest),
        task_digest=ctx.task_digest,
        wire_dtype=None,
        retries=5,
        backoff_s=0.2,
    )
    rogue.join()
    link = rogue._link
    honest = start(lambda: run_worker(fed, party_context(fed, "worker-1")), out, "worker-1")
    header, weights = link.pull(-1)
    version = header.version
    nan = TensorSet(weights.specs, [np.full_like(a, np.nan) for a in weights.arrays])
    wrong = TensorSet.from_arrays([s.name for s in weights.specs], [np.zeros(3, np.float32)] * len(weights.specs))
    reasons = [link.push(GRADIENTS, version, bad, num_samples=1, metrics={}).reason for bad in (nan, wrong)]
    wire = to_wire(GRADIENTS, version, weights)
    link.link.send(pb.LinkRequest(push=wire.header))
    assert link.link.recv(pb.PushGrant).granted
    link.link.send_raw(wire.views()[:1])  # truncated: the data breaks off
    link.close()
    ch = rogue._channel
    garbage = ch.open_link(fed.ps.data_address)
    garbage.stream.sendall(memoryview(b"\x00\x00\x00\x04\xff\xff\xff\xff"))  # not a LinkRequest
    with pytest.raises(LinkError):
        garbage.recv(pb.PushGrant)
    garbage.close()
    ch.close()
    ps.join(240)
    honest.join(30)
    assert "NaN" in reasons[0]
    assert "shape" in reasons[1]
    assert isinstance(out["ps"], PsResult), out["ps"]
    assert out["ps"].rounds == 2 and out["ps"].accuracy > 0.3
    assert isinstance(out["worker-1"], WorkerResult) and out["worker-1"].rejected == 0


def test_pytorch_workers_and_ps_train_together(make_federation: Callable[..., Federation]) -> None:
    fed = make_federation(
        training={
            "framework": "torch",
            "model": "small_cnn",
            "rounds": 2,
            "steps_per_round": 30,
            "learning_rate": 0.002,
        }
    )
    out = run_federation(fed, ["worker-1", "worker-2"])
    result = out["ps"]
    assert isinstance(result, PsResult), result
    assert result.accuracy > 0.8


def test_sealed_metrics_leave_nothing_in_the_clear(make_federation: Callable[..., Federation]) -> None:
    from tdxfl.store.sealed import read_sealed_bytes

    fed = make_federation(training={"rounds": 2, "steps_per_round": 5}, output={"seal_metrics": True})
    out = run_federation(fed, ["worker-1", "worker-2"])
    assert isinstance(out["ps"], PsResult), out["ps"]
    ctx = party_context(fed, "ps")
    files = {p.name for p in ctx.workdir.rglob("*") if p.is_file()}
    assert "metrics.jsonl" not in files and "training.png" not in files
    key = model_key(fed, ctx)
    lines = read_sealed_bytes(ctx.workdir / "metrics.jsonl.sealed", key, label="metrics").decode().splitlines()
    assert len(lines) == 2 and '"accuracy"' in lines[0]
    assert read_sealed_bytes(ctx.workdir / "training.png.sealed", key, label="metrics").startswith(b"\x89PNG")
    worker_files = {p.name for p in party_context(fed, "worker-1").workdir.rglob("*") if p.is_file()}
    logs = worker_files - {"attestation.jsonl"}
    assert len(logs) == 1 and logs.pop().startswith("training-log-")
