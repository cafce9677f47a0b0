"""The parameter server, wired: model key, sealed store, evaluation data and model, the attested
fleet, and the engine's round loop with metrics and checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tdxfl.config import Federation
from tdxfl.config.federation import SERVER_OPTIMIZED, StrategyName
from tdxfl.engine.aggregators import CoordinateMedian, Krum, RobustAggregation, RobustRule, TrimmedMean
from tdxfl.engine.central_dp import CentralDP
from tdxfl.engine.fleet import PROGRESS_LOGGER, RunEnd
from tdxfl.engine.kinds import Mode, RunStatus
from tdxfl.engine.optimizers import SGD, AdaptiveServerOptimizer, Optimizer, make_optimizer
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.server import RoundMetrics, RoundPlan, run_rounds
from tdxfl.engine.strategy import FedAvg, FedOpt, LocalTraining, Strategy, SyncGradients
from tdxfl.errors import ConfigError, TdxflError
from tdxfl.privacy.accounting import GaussianAccountant, calibrate_noise_multiplier
from tdxfl.server.fleet import AttestedFleet, PsAddresses
from tdxfl.server.metrics import MetricsRecorder
from tdxfl.store.model_store import SealedFileStore
from tdxfl.store.run_state import RunState, archive_run, load_run_state, new_run_id, run_files, save_run_state
from tdxfl.store.sealed import seal_file
from tdxfl.wiring.party import PartyContext, check_role, model_key
from tdxfl.wiring.tasks import checkpoint_meta, local_data, measure_task, resolve_task

__all__ = [
    "FINAL_MODEL",
    "CheckpointLedger",
    "ParameterServer",
    "PsResult",
    "attested_fleet",
    "make_strategy",
    "round_plan",
    "run_parameter_server",
]

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)
FINAL_MODEL = "final"


@dataclass(frozen=True)
class PsResult:
    """Outcome of a completed federation, as the parameter server saw it."""

    rounds: int
    accuracy: float
    loss: float
    checkpoint: str
    wall_s: float


def _robust(federation: Federation) -> RobustAggregation | None:
    s = federation.strategy
    rules: dict[StrategyName, Callable[[], RobustRule]] = {
        StrategyName.MEDIAN: CoordinateMedian,
        StrategyName.TRIMMED_MEAN: lambda: TrimmedMean(s.trim_fraction),
        StrategyName.KRUM: lambda: Krum(s.byzantine),
        StrategyName.MULTI_KRUM: lambda: Krum(s.byzantine, s.krum_select),
    }
    if s.name not in rules:
        return None
    return RobustAggregation(rules[s.name](), len(federation.workers), s.max_buffer_mib * 2**20)


def _server_optimizer(federation: Federation) -> Optimizer:
    s = federation.strategy
    if s.name is StrategyName.FEDAVGM:
        return SGD(s.effective_learning_rate, s.server_momentum)
    rule = {StrategyName.FEDADAM: "adam", StrategyName.FEDYOGI: "yogi", StrategyName.FEDADAGRAD: "adagrad"}[s.name]
    return AdaptiveServerOptimizer(rule, s.effective_learning_rate, s.beta1, s.beta2, s.tau)


def make_strategy(federation: Federation, trainable: Sequence[bool]) -> Strategy:
    """The strategy for ``[training]``, ``[strategy]`` and ``[privacy]`` (both sides build the
    same one; the PS's aggregates, the workers' make updates)."""
    t, s, p = federation.training, federation.strategy, federation.privacy
    strategy: Strategy
    if t.mode is Mode.FEDAVG:
        mu = s.proximal_mu if s.name is StrategyName.FEDPROX else 0.0
        local = LocalTraining(t.steps_per_round, t.learning_rate, t.optimizer, seed=t.seed, proximal_mu=mu)
        if s.name in SERVER_OPTIMIZED:
            strategy = FedOpt(local, _server_optimizer(federation), trainable)
        else:
            strategy = FedAvg(local, robust=_robust(federation))
    else:
        optimizer = make_optimizer(t.optimizer, t.learning_rate, t.momentum)
        strategy = SyncGradients(optimizer, trainable, t.steps_per_round, robust=_robust(federation))
    if not p.enabled:
        return strategy
    z = p.noise_multiplier or calibrate_noise_multiplier(p.target_epsilon, p.delta, t.rounds * strategy.steps_per_round)
    return CentralDP(strategy, p.clip_norm, z, GaussianAccountant(z, p.delta))


def round_plan(federation: Federation) -> RoundPlan:
    """The engine's plan from ``[training]`` and ``[faults]``."""
    f = federation.faults
    return RoundPlan(
        rounds=federation.training.rounds,
        quorum=federation.quorum,
        step_timeout_s=f.step_timeout_s,
        on_timeout=f.on_timeout,
        join_timeout_s=f.join_timeout_s,
        target_accuracy=federation.training.target_accuracy,
    )


def attested_fleet(
    federation: Federation,
    ctx: PartyContext,
    specs: Sequence[TensorSpec],
    strategy: Strategy,
    *,
    max_handshakes: int = 64,
    run_id: str = "",
) -> AttestedFleet:
    """The PS's attested fleet for run ``run_id`` on the federation file's addresses (bound, not
    yet started)."""
    ps, f = federation.ps, federation.faults
    return AttestedFleet(
        ctx.name,
        ctx.attester,
        ctx.peer_verifier(federation.policy_for("workers")),
        PsAddresses(ps.address, ps.enroll_address, ps.data_address),
        [w.name for w in federation.workers],
        specs,
        strategy,
        digest=federation.training_digest(ctx.task_digest),
        max_concurrent_updates=f.max_concurrent_updates,
        transfer_timeout=f.step_timeout_s,
        max_handshakes=max_handshakes,
        task_digest=ctx.task_digest,
        run_id=run_id,
    )


class CheckpointLedger(Protocol):
    """A record of the PS's saved run states kept off its disk: what makes a rolled-back
    checkpoint detectable (sealing alone cannot: an older sealed file is genuine too)."""

    def record(self, run_id: str, round_: int, sha256: str) -> None:
        """Note that run ``run_id``'s state after round ``round_`` is the file with ``sha256``."""
        ...

    def check(self, run_id: str, round_: int, sha256: str) -> None:
        """SealedFileError naming both rounds when the state found on disk (its round and file
        digest) is older than, or differs from, the latest recorded one."""
        ...


class UnanchoredLedger:
    """No ledger (no key broker configured): resume trusts the disk; said once, loudly."""

    def __init__(self) -> None:
        log.warning(
            "no [keybroker]: checkpoints are not anchored outside this disk, so a rolled-back "
            "(older, genuine) run state would be resumed without notice"
        )

    def record(self, run_id: str, round_: int, sha256: str) -> None:
        return None

    def check(self, run_id: str, round_: int, sha256: str) -> None:
        return None


class ParameterServer:
    """One federation's parameter server: constructing it fetches the model key, loads the
    evaluation data and the model, opens its run (resumed from the sealed run state in its
    working directory, or new) and binds the attested fleet's ports (``addresses`` says where,
    with port 0 resolved); ``run`` serves the federation to completion.

    A run resumes unless ``fresh``; a new run over an earlier run's files needs ``fresh``, which
    moves them to ``previous-runs/<run id>/``. ``ledger`` anchors every saved state (default:
    the key broker's, or none without a ``[keybroker]``).
    """

    def __init__(
        self,
        federation: Federation,
        ctx: PartyContext,
        *,
        live: bool = True,
        fresh: bool = False,
        ledger: CheckpointLedger | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        check_role(federation, ctx.name, "ps")
        self.federation, self.ctx, self.live = federation, ctx, live
        # the task's code and data first: their faults show before any key is fetched
        task = resolve_task(federation, ctx.name, ctx.task_files or measure_task(federation))
        self.data = local_data(federation, task, ctx.name)
        self.adapter = task.build_adapter(self.data.x)
        self.model_meta = checkpoint_meta(task, self.adapter, self.data)
        self.weights = self.adapter.get_tensor_set()
        self.strategy = make_strategy(federation, self.adapter.trainable_mask())
        self._key = model_key(federation, ctx)
        self.ledger: CheckpointLedger = ledger or UnanchoredLedger()
        self.run_state = self._open_run(fresh, now)
        self.fleet = attested_fleet(federation, ctx, self.weights.specs, self.strategy, run_id=self.run_state.run_id)

    def _store(self) -> SealedFileStore:
        return SealedFileStore(self.ctx.workdir / "checkpoints", self._key, label="checkpoint")

    def _open_run(self, fresh: bool, now: Callable[[], datetime]) -> RunState:
        """The run to serve: the saved one resumed, or a new one (its state saved at round 0)."""
        workdir = self.ctx.workdir
        settings = self.federation.training_digest(self.ctx.task_digest)
        self.store = self._store()
        found = load_run_state(self.store, self.weights.specs)
        if found is not None and not fresh:
            state, sha = found
            self.ledger.check(state.run_id, state.round, sha)
            if state.completed:
                raise ConfigError(
                    f"run {state.run_id} in {workdir} is complete ({state.round} rounds); "
                    f"--fresh starts a new run (its files move to previous-runs/{state.run_id}/)"
                )
            if state.settings != settings:
                raise ConfigError(
                    f"the training settings or task code changed since run {state.run_id} started: resume it "
                    "with the settings it started with, or start a new run with --fresh"
                )
            for mine, saved in zip(self.weights.arrays, state.weights.arrays):
                mine[...] = saved
            state.weights = self.weights
            self.strategy.load_state(state.strategy, after_crash=True)
            progress.info("resuming run %s after round %d (model version %d)", state.run_id, state.round, state.version)
            return state
        leftovers = [p for p in run_files(workdir) if not (p.is_dir() and not any(p.iterdir()))]
        if leftovers and not fresh:
            raise ConfigError(
                f"{workdir} holds files of an earlier run ({', '.join(p.name for p in leftovers)}) but no run "
                "state to resume it from: --fresh starts a new run (they move to previous-runs/)"
            )
        if leftovers:
            old = found[0].run_id if found else f"unnamed-{now():%Y%m%dT%H%M%SZ}"
            archive_run(workdir, old)
            progress.info("the files of run %s moved to %s", old, workdir / "previous-runs" / old)
            self.store = self._store()
        state = RunState(new_run_id(now()), settings, self.weights)
        self._save(state)
        progress.info("starting run %s", state.run_id)
        return state

    def _save(self, state: RunState) -> None:
        state.strategy = self.strategy.state()
        sha = save_run_state(self.store, state)
        self.ledger.record(state.run_id, state.round, sha)

    @property
    def addresses(self) -> PsAddresses:
        """Where the PS listens (port 0 in the federation file resolved to the bound port)."""
        return self.fleet.addresses

    def _evaluate(self, w: TensorSet) -> tuple[float, float]:
        self.adapter.set_weights(w.arrays)
        return self.adapter.evaluate(*self.data.evaluation())

    def _meta(self, round_: int, version: int, accuracy: float, loss: float) -> dict[str, Any]:
        return {
            "round": round_,
            "version": version,
            "accuracy": accuracy,
            "loss": loss,
            "run_id": self.run_state.run_id,
            **self.model_meta,
        }

    def _seal_metrics(self, path: Path, data: bytes) -> None:
        seal_file(path, self._key, data, label="metrics")

    def run(self) -> PsResult:
        """Serve the federation to completion; FederationError when it cannot finish. Workers
        are told how the run ended (completed, failed or interrupted, with the reason); the
        ports are closed when this returns or raises."""
        fed, workdir, state = self.federation, self.ctx.workdir, self.run_state
        every = fed.output.checkpoint_every
        history = [RoundMetrics(**r) for r in state.rounds]
        end = RunEnd(RunStatus.FAILED, "the parameter server stopped on an error")
        self.fleet.start()
        try:
            sealer = self._seal_metrics if fed.output.seal_metrics else None
            with MetricsRecorder(
                workdir / "metrics.jsonl", fed.training.rounds, live=self.live, seal=sealer, history=history
            ) as recorder:

                def on_round(m: RoundMetrics, w: TensorSet) -> None:
                    recorder.record(m)
                    if every and m.round % every == 0:
                        self.store.save(f"round-{m.round:04d}", w, self._meta(m.round, m.version, m.accuracy, m.loss))
                    state.rounds.append(asdict(m))
                    state.version = m.version
                    self._save(state)

                result = run_rounds(
                    self.fleet,
                    self.strategy,
                    self.weights,
                    round_plan(fed),
                    evaluate=self._evaluate,
                    on_round=on_round,
                    on_status=recorder.status,
                    resume=history[-1] if history else None,
                )
                final = self._meta(result.rounds, result.version, result.accuracy, result.loss)
                checkpoint = self.store.save(FINAL_MODEL, self.weights, final)
                state.completed = True
                self._save(state)
                recorder.plot(workdir / "training.png")
            end = RunEnd(RunStatus.COMPLETED)
        except KeyboardInterrupt:
            end = RunEnd(RunStatus.INTERRUPTED, "the parameter server was stopped; restarted, it resumes the run")
            raise
        except TdxflError as e:
            end = RunEnd(RunStatus.FAILED, str(e))
            raise
        finally:
            self.fleet.finish(end)
            self.fleet.stop()
        progress.info("run %s %s after %d rounds", state.run_id, end.status.value, result.rounds)
        return PsResult(result.rounds, result.accuracy, result.loss, checkpoint, result.wall_s)


def run_parameter_server(
    federation: Federation, ctx: PartyContext, *, live: bool = True, fresh: bool = False
) -> PsResult:
    """Set up and serve one federation to completion (``ParameterServer(...).run()``)."""
    return ParameterServer(federation, ctx, live=live, fresh=fresh).run()
