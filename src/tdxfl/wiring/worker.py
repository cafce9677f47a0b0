"""A worker, wired: model key, sealed state, its local data shard and model, the attested
connection to the PS, and the engine's worker loop."""

from __future__ import annotations

import logging

import numpy as np

from tdxfl.client.connection import AttestedConnection, PsEndpoint, connect_to_ps
from tdxfl.config import Federation
from tdxfl.engine.compression import Codec, Compressor
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import PROGRESS_LOGGER
from tdxfl.engine.records import TensorSet
from tdxfl.engine.worker import WorkerResult, run_worker_loop
from tdxfl.errors import ConfigError, SealedFileError
from tdxfl.store.model_store import SealedFileStore
from tdxfl.wiring.party import PartyContext, model_key
from tdxfl.wiring.ps import make_strategy
from tdxfl.wiring.tasks import local_data, measure_task, resolve_task

__all__ = ["run_worker"]

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


def run_worker(federation: Federation, ctx: PartyContext) -> WorkerResult:
    """Train until the parameter server finishes; raises on refusal or when the PS is gone."""
    t, f = federation.training, federation.faults
    names = [w.name for w in federation.workers]
    if ctx.name not in names:
        raise ConfigError(f"{ctx.name!r} is not a worker of this federation (workers: {', '.join(names)})")
    index = names.index(ctx.name)
    # the task's code and data first: their faults show before any key is fetched
    task = resolve_task(federation, ctx.name, ctx.task_files or measure_task(federation))
    samples = local_data(federation, task, ctx.name)
    local = LocalData(samples.x, samples.y, t.batch_size, t.seed + index, samples.x_val, samples.y_val)
    log.info("worker %s: %d local samples", ctx.name, len(local.x))
    adapter = task.build_adapter(samples.x)
    strategy = make_strategy(federation, adapter.trainable_mask())
    store = SealedFileStore(ctx.workdir / "sealed", model_key(federation, ctx), label="worker-state")
    ps = federation.ps
    endpoint = PsEndpoint(ps.name, ps.address, ps.enroll_address, ps.data_address)
    verifier = ctx.peer_verifier(federation.policy_for("ps"))
    wire = t.wire_dtype if t.wire_dtype != "float32" else None

    def connect() -> AttestedConnection:
        progress.info("%s: connecting to the parameter server %s at %s", ctx.name, ps.name, ps.address)
        return connect_to_ps(
            ctx.name,
            ctx.attester,
            verifier,
            endpoint,
            digest=federation.training_digest(ctx.task_digest),
            wire_dtype=wire,
            retries=f.connect_retries,
            backoff_s=f.connect_backoff_s,
            task_digest=ctx.task_digest,
        )

    compressor = (
        None
        if t.compression == "none"
        else Compressor(Codec(t.compression), topk_fraction=t.topk_fraction, error_feedback=t.error_feedback)
    )
    result = run_worker_loop(
        ctx.name, connect, adapter, strategy, local, max_reconnects=f.connect_retries, compressor=compressor
    )
    _save_training_log(store, result, len(local.x))
    return result


def _save_training_log(store: SealedFileStore, result: WorkerResult, samples: int) -> None:
    """Seal this worker's losses as ``training-log-<run id>``: a restarted worker adds to its run's
    log (checked to be that run's), and another run's log is never touched."""
    name = f"training-log-{result.run_id}"
    losses, steps, rejected = np.asarray(result.losses, np.float32), result.steps, result.rejected
    if store.exists(name):
        earlier, meta = store.load(name)
        if meta.get("run_id") != result.run_id:
            raise SealedFileError(f"{name}.sealed does not hold the training log of run {result.run_id}")
        losses = np.concatenate([earlier.arrays[0], losses])
        steps, rejected = steps + int(meta["steps"]), rejected + int(meta["rejected"])
    meta = {"run_id": result.run_id, "steps": steps, "rejected": rejected, "samples": samples}
    store.save(name, TensorSet.from_arrays(["loss"], [losses]), meta)
