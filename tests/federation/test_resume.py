"""A PS that stops part way resumes its run from the sealed run state (one process: PS and
workers in threads, real attested gRPC and tensor links)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from test_training import start

from tdxfl.config import Federation
from tdxfl.engine.worker import WorkerResult
from tdxfl.errors import ConfigError, FederationError
from tdxfl.store.run_state import RUN_STATE, load_run_state
from tdxfl.wiring.party import party_context
from tdxfl.wiring.ps import ParameterServer, PsResult
from tdxfl.wiring.worker import run_worker

WORKERS = ["worker-1", "worker-2"]


def _fed(make_federation: Callable[..., Federation], **training: Any) -> Federation:
    return make_federation(
        training={"rounds": 4, "steps_per_round": 5, **training},
        faults={"connect_retries": 8, "connect_backoff_s": 0.2},
    )


def _stop_at_round(ps: ParameterServer, round_: int, stop: Callable[[], None]) -> None:
    """Make ``ps`` call ``stop()`` when it evaluates round ``round_`` (before that round is saved)."""
    evaluate, calls = ps._evaluate, [0]

    def evaluate_then_stop(w: Any) -> tuple[float, float]:
        calls[0] += 1
        if calls[0] == round_:
            stop()
        return evaluate(w)

    ps._evaluate = evaluate_then_stop  # type: ignore[method-assign]


def _rounds(fed: Federation) -> list[dict[str, Any]]:
    path = party_context(fed, "ps").workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_crashed_ps_resumes_and_the_surviving_workers_take_its_model(
    make_federation: Callable[..., Federation],
) -> None:
    fed = _fed(make_federation)
    out: dict[str, Any] = {}
    first = ParameterServer(fed, party_context(fed, "ps"), live=False)
    a = first.addresses
    fed = fed.with_ps_addresses(a.address, a.enroll_address, a.data_address)  # the restarted PS binds these too
    run_id = first.run_state.run_id

    def crash() -> None:  # as kill -9 would: the ports vanish, nobody is told anything
        first.fleet.links.stop()
        first.fleet.server.stop(grace=0)
        raise RuntimeError("simulated crash")

    _stop_at_round(first, 2, crash)
    ps = start(first.run, out, "first")
    workers = [start(lambda w=w: run_worker(fed, party_context(fed, w)), out, w) for w in WORKERS]
    ps.join(120)
    assert isinstance(out["first"], RuntimeError)

    second = ParameterServer(fed, party_context(fed, "ps"), live=False)
    assert (second.run_state.run_id, second.run_state.round, second.run_state.version) == (run_id, 1, 5)
    result = second.run()
    for t in workers:
        t.join(60)
    assert isinstance(result, PsResult) and result.rounds == 4 and result.accuracy > 0.6
    for w in WORKERS:  # they lived through the crash, rejoined and trained on to the end
        assert isinstance(out[w], WorkerResult), out[w]
        assert out[w].run_id == run_id and out[w].reconnects >= 1
    rounds = _rounds(fed)  # round 1 from before the crash, 2-4 after: one history, no gap
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert [r["version"] for r in rounds] == [5, 10, 15, 20]


def test_an_interrupted_ps_tells_the_workers_and_a_restart_resumes(
    make_federation: Callable[..., Federation],
) -> None:
    fed = _fed(make_federation, rounds=3)
    out: dict[str, Any] = {}
    first = ParameterServer(fed, party_context(fed, "ps"), live=False)
    a = first.addresses
    fed = fed.with_ps_addresses(a.address, a.enroll_address, a.data_address)

    def interrupt() -> None:
        raise KeyboardInterrupt  # what SIGINT or SIGTERM raise in `tdxfl ps`

    _stop_at_round(first, 2, interrupt)
    ps = start(first.run, out, "first")
    workers = [start(lambda w=w: run_worker(fed, party_context(fed, w)), out, w) for w in WORKERS]
    ps.join(120)
    for t in workers:
        t.join(60)
    assert isinstance(out["first"], KeyboardInterrupt)
    for w in WORKERS:  # a worker does not take an interrupted run for a completed one
        assert isinstance(out[w], FederationError) and "interrupted" in str(out[w]), out[w]

    second = ParameterServer(fed, party_context(fed, "ps"), live=False)
    assert second.run_state.round == 1
    restarted = [start(lambda w=w: run_worker(fed, party_context(fed, w)), out, w) for w in WORKERS]
    result = second.run()
    for t in restarted:
        t.join(60)
    assert result.rounds == 3
    assert all(isinstance(out[w], WorkerResult) for w in WORKERS), out
    assert [r["round"] for r in _rounds(fed)] == [1, 2, 3]


def _complete_run(fed: Federation) -> tuple[Federation, str]:
    out: dict[str, Any] = {}
    ps = ParameterServer(fed, party_context(fed, "ps"), live=False)
    a = ps.addresses
    bound = fed.with_ps_addresses(a.address, a.enroll_address, a.data_address)
    workers = [start(lambda w=w: run_worker(bound, party_context(bound, w)), out, w) for w in WORKERS]
    ps.run()
    for t in workers:
        t.join(60)
    return fed, ps.run_state.run_id


def test_a_completed_run_is_not_restarted_without_fresh_and_fresh_keeps_its_files(
    make_federation: Callable[..., Federation],
) -> None:
    fed, run_id = _complete_run(_fed(make_federation, rounds=1))
    workdir = party_context(fed, "ps").workdir
    with pytest.raises(ConfigError, match=f"run {run_id} .* is complete.*--fresh"):
        ParameterServer(fed, party_context(fed, "ps"), live=False)
    again = ParameterServer(fed, party_context(fed, "ps"), live=False, fresh=True)
    archived = workdir / "previous-runs" / run_id
    assert (archived / "checkpoints" / "final.sealed").is_file() and (archived / "metrics.jsonl").is_file()
    assert again.run_state.run_id != run_id and again.run_state.round == 0
    state = load_run_state(again.store, again.weights.specs)  # the new run's own state, saved at its start
    assert state is not None and state[0].run_id == again.run_state.run_id
    assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints" / "final.sealed").exists()
    again.fleet.stop(linger=0)


def test_changed_settings_or_a_foreign_run_folder_need_fresh(
    make_federation: Callable[..., Federation],
) -> None:
    fed = _fed(make_federation, rounds=2)
    first = ParameterServer(fed, party_context(fed, "ps"), live=False)
    first.fleet.stop(linger=0)
    changed = _fed(make_federation, rounds=2, learning_rate=0.5)
    with pytest.raises(ConfigError, match="settings or task code changed .*--fresh"):
        ParameterServer(changed, party_context(changed, "ps"), live=False)
    (first.store.path_for(RUN_STATE)).unlink()  # files of a run, but no state to resume it from
    (party_context(fed, "ps").workdir / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="files of an earlier run .*--fresh"):
        ParameterServer(fed, party_context(fed, "ps"), live=False)


def test_a_ps_started_under_a_worker_name_is_refused(make_federation: Callable[..., Federation]) -> None:
    fed = _fed(make_federation)
    with pytest.raises(ConfigError, match="'worker-1' is a worker of this federation, not a ps"):
        ParameterServer(fed, party_context(fed, "worker-1"), live=False)
