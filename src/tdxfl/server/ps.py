"""The parameter server's training loop: publish the global model, collect a quorum of updates,
aggregate, evaluate every round, checkpoint into sealed storage."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tdxfl.config import Federation
from tdxfl.core.optimizers import make_optimizer
from tdxfl.core.strategy import FedAvg, Strategy, SyncGradients
from tdxfl.party import PartyContext, model_key
from tdxfl.server.metrics import MetricsRecorder, RoundMetrics
from tdxfl.server.rounds import RoundState
from tdxfl.server.service import ParameterServerService
from tdxfl.store.model_store import SealedFileStore
from tdxfl.store.sealed import seal_file
from tdxfl.transport.attested import AttestedServer, role_table, split_address
from tdxfl.transport.link import LinkServer
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.tensors import to_wire

log = logging.getLogger(__name__)
FINAL_MODEL = "final"


@dataclass
class TrainingResult:
    """Outcome of a completed federation, as the parameter server saw it."""

    rounds: int
    accuracy: float
    loss: float
    checkpoint: str
    wall_s: float


def make_strategy(federation: Federation, trainable: list[bool]) -> Strategy:
    """The aggregation strategy for ``training.mode``."""
    t = federation.training
    if t.mode == "fedavg":
        return FedAvg()
    return SyncGradients(make_optimizer(t.optimizer, t.learning_rate, t.momentum), trainable)


def run_parameter_server(federation: Federation, ctx: PartyContext, *, live: bool = True) -> TrainingResult:
    """Serve one federation to completion; raise FederationError when it cannot finish."""
    from tdxfl.ml.data import load_dataset
    from tdxfl.ml.factory import make_adapter

    t = federation.training
    started = time.monotonic()
    key = model_key(federation, ctx)
    store = SealedFileStore(ctx.workdir / "checkpoints", key, label="checkpoint")

    def seal_metrics(path: Path, data: bytes) -> None:
        seal_file(path, key, data, label="metrics")

    sealer = seal_metrics if federation.output.seal_metrics else None
    data = load_dataset(t.dataset, t.data_path or None, seed=t.seed)
    adapter = make_adapter(t.framework, t.model, data.input_shape, data.num_classes, seed=t.seed)
    weights = adapter.get_tensor_set()
    strategy = make_strategy(federation, adapter.trainable_mask())
    rounds = RoundState(weights.specs, strategy.update_kind)
    ps = federation.ps
    server = AttestedServer(
        ctx.name,
        ctx.attester,
        ctx.peer_verifier(federation, "workers"),
        ps.address,
        ps.enroll_address,
        roles=role_table([(w.name, "worker") for w in federation.workers]),
    )
    service = ParameterServerService(federation, server, rounds)
    pb_grpc.add_ParameterServerServicer_to_server(service, server.main)
    links = LinkServer(split_address(ps.data_address), server.link_context, server.link_party, service.serve_link, server.link_refused)
    server.start()
    links.start()
    log.info(
        "parameter server %s listening on %s (enrollment %s, tensors %s)", ctx.name, ps.address, ps.enroll_address, ps.data_address
    )
    steps = t.steps_per_round if t.mode == "sync-gradients" else 1
    f = federation.faults
    version = 0
    metrics_path = ctx.workdir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    loss = accuracy = float("nan")
    try:
        with MetricsRecorder(metrics_path, t.rounds, live=live, seal=sealer) as recorder:
            rounds.wait_for_workers(federation.quorum, f.join_timeout_s)
            for r in range(1, t.rounds + 1):
                recorder.status(f"training round {r}")
                t0, in0, out0 = time.monotonic(), rounds.bytes_in, rounds.bytes_out
                contributors = rejected = 0
                train_loss = 0.0
                for _ in range(steps):
                    rounds.publish(version, to_wire("weights", version, weights))  # shares weights' memory
                    step = rounds.collect(
                        federation.quorum,
                        f.step_timeout_s,
                        fail_on_timeout=f.on_timeout == "fail",
                        grace=f.join_timeout_s,
                    )
                    rounds.retire(f.step_timeout_s)  # no worker is reading the weights now
                    strategy.apply(weights, step.mean)
                    version += 1
                    contributors += len(step.contributors)
                    rejected += len(step.rejected)
                    train_loss += step.metrics.get("loss", float("nan"))
                adapter.set_weights(weights.arrays)
                loss, accuracy = adapter.evaluate(data.x_test, data.y_test)
                recorder.record(
                    RoundMetrics(
                        round=r,
                        version=version,
                        loss=loss,
                        accuracy=accuracy,
                        train_loss=train_loss / steps,
                        bytes_in=rounds.bytes_in - in0,
                        bytes_out=rounds.bytes_out - out0,
                        round_s=time.monotonic() - t0,
                        contributors=contributors,
                        rejected=rejected,
                    )
                )
                meta = {
                    "round": r, "version": version, "accuracy": accuracy, "loss": loss, "model": t.model,
                    "framework": t.framework, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                }
                if federation.output.checkpoint_every and r % federation.output.checkpoint_every == 0:
                    store.save(f"round-{r:04d}", weights, meta)
                if t.target_accuracy and accuracy >= t.target_accuracy:
                    log.info("target accuracy %.3f reached in round %d", t.target_accuracy, r)
                    break
            checkpoint = store.save(FINAL_MODEL, weights, meta)
            recorder.plot(ctx.workdir / "training.png")
    finally:
        rounds.finish()
        time.sleep(0.5)  # let waiting workers receive "done"
        links.stop()
        server.stop(grace=2.0)
    return TrainingResult(r, accuracy, loss, checkpoint, time.monotonic() - started)
