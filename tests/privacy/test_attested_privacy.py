"""FedAdam under central DP over the real attested stack: PS and workers in threads, RA-TLS
enrollment, mutual-TLS gRPC and tensor links, Keras on digits. Both sides build the strategy from
the same ``[strategy]`` and ``[privacy]`` (the digest binds them); the PS reports epsilon every
round in ``metrics.jsonl``."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tdxfl.config import Federation
from tdxfl.engine.worker import WorkerResult
from tdxfl.privacy.accounting import GaussianAccountant
from tdxfl.wiring.party import party_context
from tdxfl.wiring.ps import ParameterServer, PsResult
from tdxfl.wiring.worker import run_worker


def start(fn: Callable[[], Any], out: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = fn()
        except BaseException as e:  # surfaced by the test's assertions
            out[key] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_fedadam_with_central_dp_trains_over_attested_links(make_federation: Callable[..., Federation]) -> None:
    privacy = {"clip_norm": 2.0, "noise_multiplier": 0.01, "delta": 1e-5}
    fed = make_federation(
        training={"mode": "fedavg", "rounds": 3, "steps_per_round": 20, "learning_rate": 0.01},
        strategy={"name": "fedadam", "server_learning_rate": 0.03},
        privacy=privacy,
    )
    ps = ParameterServer(fed, party_context(fed, "ps"), live=False)
    a = ps.addresses
    fed = fed.with_ps_addresses(a.address, a.enroll_address, a.data_address)
    out: dict[str, Any] = {}
    threads = [start(ps.run, out, "ps")]
    threads += [start(lambda w=w: run_worker(fed, party_context(fed, w)), out, w) for w in ("worker-1", "worker-2")]
    for t in threads:
        t.join(240)
    result = out["ps"]
    assert isinstance(result, PsResult), result
    assert result.rounds == 3 and result.accuracy > 0.6
    assert all(isinstance(out[w], WorkerResult) and out[w].rejected == 0 for w in ("worker-1", "worker-2"))
    rounds = [
        json.loads(line) for line in (party_context(fed, "ps").workdir / "metrics.jsonl").read_text().splitlines()
    ]
    reference, want = GaussianAccountant(0.01, 1e-5), []
    for _ in rounds:
        reference.spend()  # fedavg: one release per round
        want.append(reference.epsilon())
    assert [r["epsilon"] for r in rounds] == pytest.approx(want)
