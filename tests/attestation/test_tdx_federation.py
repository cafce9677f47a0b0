"""A federation whose PS uses the real TDX attester (mocked configfs-tsm) and whose workers use
the real DCAP verifier: the PS's quote cannot be signed for its fresh TLS key, so it is refused.
Nothing falls back to simulation or to an unattested channel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tdxfl.config import Federation
from tdxfl.errors import AttestationRefused, FederationError
from tdxfl.wiring.party import party_context
from tdxfl.wiring.ps import ParameterServer
from tdxfl.wiring.worker import run_worker


def test_tdx_ps_is_refused_by_real_verifier(
    make_federation: Callable[..., Federation], fake_configfs: Any, tdx_collateral_path: Path
) -> None:
    fed = make_federation(
        attestation={"tdx": {"collateral_file": str(tdx_collateral_path)}},
        policy={"ps": {"tee": ["tdx"], "mrtd": "any"}, "workers": {"tee": ["simulated"], "mrtd": "any"}},
        faults={"join_timeout_s": 8.0, "connect_retries": 2},
    )
    ps_ctx = replace(party_context(fed, "ps"), attester=fake_configfs())
    out: dict[str, Any] = {}
    ps = ParameterServer(fed, ps_ctx, live=False)
    fed = fed.with_ps_addresses(ps.addresses.address, ps.addresses.enroll_address, ps.addresses.data_address)

    def serve() -> None:
        try:
            out["ps"] = ps.run()
        except FederationError as e:
            out["ps"] = e

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    w_ctx = party_context(fed, "worker-1")
    with pytest.raises(AttestationRefused) as err:
        run_worker(fed, w_ctx)
    t.join(60)
    assert "we refused ps" in str(err.value)
    (decision,) = [d for d in w_ctx.decisions.decisions if d.peer == "ps"]
    assert decision.result == "refused" and decision.tee == ""
    assert "Verification failed" in decision.reason or "signature" in decision.reason.lower()
    assert isinstance(out["ps"], FederationError) and "joined" in str(out["ps"])


def test_simulated_worker_refused_by_tdx_policy_over_the_wire(make_federation: Callable[..., Federation]) -> None:
    fed = make_federation(policy={"workers": {"tee": ["tdx"], "mrtd": "any"}}, faults={"join_timeout_s": 8.0})
    ps_ctx = party_context(fed, "ps")
    out: dict[str, Any] = {}
    ps = ParameterServer(fed, ps_ctx, live=False)
    fed = fed.with_ps_addresses(ps.addresses.address, ps.addresses.enroll_address, ps.addresses.data_address)
    t = threading.Thread(target=lambda: out.setdefault("ps", _catch(ps.run)), daemon=True)
    t.start()
    with pytest.raises(AttestationRefused, match="ps refused us: evidence kind is 'simulated'"):
        run_worker(fed, party_context(fed, "worker-1"))
    t.join(60)
    refused = [d for d in ps_ctx.decisions.decisions if d.peer == "worker-1"]
    assert refused and refused[0].result == "refused" and "tdx" in refused[0].reason


def _catch(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:
        return e
