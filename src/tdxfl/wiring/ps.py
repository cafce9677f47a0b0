"""The parameter server, wired: model key, sealed store, evaluation data and model, the attested
fleet, and the engine's round loop with metrics and checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxfl.config import Federation
from tdxfl.config.federation import SERVER_OPTIMIZED, StrategyName
from tdxfl.engine.aggregators import CoordinateMedian, Krum, RobustAggregation, RobustRule, TrimmedMean
from tdxfl.engine.central_dp import CentralDP
from tdxfl.engine.kinds import Mode
from tdxfl.engine.optimizers import SGD, AdaptiveServerOptimizer, Optimizer, make_optimizer
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.server import RoundMetrics, RoundPlan, run_rounds
from tdxfl.engine.strategy import FedAvg, FedOpt, LocalTraining, Strategy, SyncGradients
from tdxfl.privacy.accounting import GaussianAccountant, calibrate_noise_multiplier
from tdxfl.server.fleet import AttestedFleet, PsAddresses
from tdxfl.server.metrics import MetricsRecorder
from tdxfl.store.model_store import SealedFileStore
from tdxfl.store.sealed import seal_file
from tdxfl.wiring.party import PartyContext, model_key
from tdxfl.wiring.tasks import checkpoint_meta, local_data, measure_task, resolve_task

__all__ = [
    "FINAL_MODEL",
    "ParameterServer",
    "PsResult",
    "attested_fleet",
    "make_strategy",
    "round_plan",
    "run_parameter_server",
]

log = logging.getLogger(__name__)
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
) -> AttestedFleet:
    """The PS's attested fleet on the federation file's addresses (bound, not yet started)."""
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
    )


class ParameterServer:
    """One federation's parameter server: constructing it fetches the model key, loads the
    evaluation data and the model, and binds the attested fleet's ports (``addresses`` says where,
    with port 0 resolved); ``run`` serves the federation to completion."""

    def __init__(self, federation: Federation, ctx: PartyContext, *, live: bool = True) -> None:
        self.federation, self.ctx, self.live = federation, ctx, live
        # the task's code and data first: their faults show before any key is fetched
        task = resolve_task(federation, ctx.name, ctx.task_files or measure_task(federation))
        self.data = local_data(federation, task, ctx.name)
        self.adapter = task.build_adapter(self.data.x)
        self.model_meta = checkpoint_meta(task, self.adapter, self.data)
        self.weights = self.adapter.get_tensor_set()
        self.strategy = make_strategy(federation, self.adapter.trainable_mask())
        self._key = model_key(federation, ctx)
        self.store = SealedFileStore(ctx.workdir / "checkpoints", self._key, label="checkpoint")
        self.fleet = attested_fleet(federation, ctx, self.weights.specs, self.strategy)

    @property
    def addresses(self) -> PsAddresses:
        """Where the PS listens (port 0 in the federation file resolved to the bound port)."""
        return self.fleet.addresses

    def _evaluate(self, w: TensorSet) -> tuple[float, float]:
        self.adapter.set_weights(w.arrays)
        return self.adapter.evaluate(*self.data.evaluation())

    def _meta(self, round_: int, version: int, accuracy: float, loss: float) -> dict[str, Any]:
        return {"round": round_, "version": version, "accuracy": accuracy, "loss": loss, **self.model_meta}

    def _seal_metrics(self, path: Path, data: bytes) -> None:
        seal_file(path, self._key, data, label="metrics")

    def run(self) -> PsResult:
        """Serve the federation to completion; FederationError when it cannot finish. The ports
        are closed when this returns or raises."""
        fed, workdir = self.federation, self.ctx.workdir
        every = fed.output.checkpoint_every
        metrics_path = workdir / "metrics.jsonl"
        metrics_path.unlink(missing_ok=True)
        self.fleet.start()
        try:
            sealer = self._seal_metrics if fed.output.seal_metrics else None
            with MetricsRecorder(metrics_path, fed.training.rounds, live=self.live, seal=sealer) as recorder:

                def on_round(m: RoundMetrics, w: TensorSet) -> None:
                    recorder.record(m)
                    if every and m.round % every == 0:
                        self.store.save(f"round-{m.round:04d}", w, self._meta(m.round, m.version, m.accuracy, m.loss))

                result = run_rounds(
                    self.fleet,
                    self.strategy,
                    self.weights,
                    round_plan(fed),
                    evaluate=self._evaluate,
                    on_round=on_round,
                    on_status=recorder.status,
                )
                final = self._meta(result.rounds, result.version, result.accuracy, result.loss)
                checkpoint = self.store.save(FINAL_MODEL, self.weights, final)
                recorder.plot(workdir / "training.png")
        finally:
            self.fleet.stop()
        return PsResult(result.rounds, result.accuracy, result.loss, checkpoint, result.wall_s)


def run_parameter_server(federation: Federation, ctx: PartyContext, *, live: bool = True) -> PsResult:
    """Set up and serve one federation to completion (``ParameterServer(...).run()``)."""
    return ParameterServer(federation, ctx, live=live).run()
