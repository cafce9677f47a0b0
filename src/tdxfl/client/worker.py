"""The worker: attest the parameter server and be attested by it, then train on local data and
send only gradients (sync-gradients) or weights (fedavg) until the server says done."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from tdxfl.config import Federation
from tdxfl.core.records import TensorSet
from tdxfl.party import PartyContext, model_key
from tdxfl.client.model_link import ModelLink
from tdxfl.store.model_store import SealedFileStore
from tdxfl.transport.attested import AttestedChannel, connect
from tdxfl.transport.link import LinkError
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.retry import with_backoff
from tdxfl.transport.tensors import as_dtype

log = logging.getLogger(__name__)


@dataclass
class WorkerResult:
    """What a worker did."""

    steps: int
    rejected: int
    reconnects: int


def connect_with_retry(federation: Federation, ctx: PartyContext) -> AttestedChannel:
    """Attested connection to the PS, retrying an unreachable server with exponential backoff.

    A refusal (either side's attestation) is final and raised at once.
    """
    ps, f = federation.ps, federation.faults
    return with_backoff(
        lambda: connect(
            ctx.name, "worker", ctx.attester, ctx.peer_verifier(federation, "ps"), ps.name, ps.address, ps.enroll_address
        ),
        what=f"parameter server {ps.address}",
        retries=f.connect_retries,
        backoff_s=f.connect_backoff_s,
    )


def run_worker(federation: Federation, ctx: PartyContext) -> WorkerResult:
    """Train until the parameter server finishes; raise on refusal or when the PS is gone."""
    from tdxfl.ml.data import batches, load_dataset, partition
    from tdxfl.ml.factory import make_adapter

    t = federation.training
    store = SealedFileStore(ctx.workdir / "sealed", model_key(federation, ctx), label="worker-state")
    index = [w.name for w in federation.workers].index(ctx.name)
    data = load_dataset(t.dataset, t.data_path or None, seed=t.seed)
    shard = partition(data.y_train, len(federation.workers), t.partition, t.dirichlet_alpha, t.seed)[index]
    x, y = data.x_train[shard], data.y_train[shard]
    log.info("worker %s: %d local samples (shard %d)", ctx.name, len(x), index)
    adapter = make_adapter(t.framework, t.model, data.input_shape, data.num_classes, seed=t.seed)
    specs = adapter.specs()
    mask = adapter.trainable_mask()
    batch_iter: Iterator[tuple[np.ndarray, np.ndarray]] = batches(x, y, t.batch_size, seed=t.seed + index)
    wire = t.wire_dtype if t.wire_dtype != "float32" else None
    steps = rejected = reconnects = 0
    losses: list[float] = []
    version = -1
    while True:
        channel = connect_with_retry(federation, ctx)
        link: ModelLink | None = None
        try:
            stub = pb_grpc.ParameterServerStub(channel.channel)
            stub.Join(pb.JoinRequest(party=ctx.name, config_digest=federation.training_digest()), timeout=30)
            link = ModelLink(channel.open_link(federation.ps.data_address))
            while True:
                header, weights = link.pull(version)
                if header.kind == "done":
                    log.info("worker %s: training finished after %d steps", ctx.name, steps)
                    store.save(
                        "training-log",
                        TensorSet.from_arrays(["loss"], [np.asarray(losses, np.float32)]),
                        {"steps": steps, "rejected": rejected, "samples": len(x)},
                    )
                    return WorkerResult(steps, rejected, reconnects)
                adapter.set_weights(as_dtype(weights, specs).arrays)
                version = header.version
                if t.mode == "sync-gradients":
                    xb, yb = next(batch_iter)
                    grads, loss = adapter.compute_gradients(xb, yb)
                    it = iter(grads)
                    others = iter(adapter.non_trainable_weights())
                    arrays = [next(it) if m else next(others) for m in mask]
                    kind, samples, metrics = "gradients", len(xb), {"loss": loss}
                else:
                    out = adapter.train_local(x, y, t.steps_per_round, t.batch_size, t.learning_rate, t.optimizer, seed=t.seed + version)
                    arrays = adapter.get_weights()
                    kind, samples, metrics = "weights", len(x), {"loss": out["loss"]}
                update = TensorSet([s for s in specs], arrays)
                reply = link.push(kind, version, update, num_samples=samples, metrics=metrics, wire_dtype=wire)
                steps += 1
                losses.append(float(metrics["loss"]))
                if not reply.accepted:
                    rejected += 1
                    log.warning("worker %s: update for version %d refused: %s", ctx.name, version, reply.reason)
        except (grpc.RpcError, LinkError) as e:
            if isinstance(e, grpc.RpcError) and e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            why = e.details() if isinstance(e, grpc.RpcError) else str(e)
            reconnects += 1
            if reconnects > federation.faults.connect_retries:
                raise ConnectionError(f"lost the parameter server too often: {why}") from e
            log.warning("worker %s: connection lost (%s); reconnecting", ctx.name, why)
        finally:
            if link is not None:
                link.close()
            channel.close()
