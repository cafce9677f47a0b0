"""The worker's loop: join the parameter server, then for every model version it publishes,
compute the strategy's update on local data and push it, until the PS says training is over.

It runs against any ``ServerConnection`` (attested or in memory); a connection that breaks is
replaced by a new one from ``connect``, up to ``max_reconnects`` times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tdxfl.engine.compression import Compressor
from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import VAL_ACCURACY, VAL_LOSS, VAL_SAMPLES, ServerConnection
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import Strategy
from tdxfl.errors import LinkError, TaskError, TdxflError, Unavailable

__all__ = ["WorkerResult", "run_worker_loop"]

log = logging.getLogger(__name__)


@dataclass
class WorkerResult:
    """What a worker did."""

    steps: int = 0
    rejected: int = 0
    reconnects: int = 0
    losses: list[float] = field(default_factory=list)


def run_worker_loop(
    name: str,
    connect: Callable[[], ServerConnection],
    model: ModelAdapter,
    strategy: Strategy,
    data: LocalData,
    *,
    max_reconnects: int,
    compressor: Compressor | None = None,
) -> WorkerResult:
    """Train until the PS finishes and return what was done.

    ``connect()`` opens a connection to the PS (its own errors, e.g. an attestation refusal or
    an unreachable PS, end the loop); a connection that breaks (LinkError) is replaced, and after
    ``max_reconnects`` replacements the loop raises Unavailable. With a ``compressor``, each
    update is sent compressed as its change against the global model just received (error
    feedback state lives in the compressor, across reconnects).
    """
    result = WorkerResult()
    specs = model.specs()
    version = -1
    while True:
        conn = connect()
        try:
            joined = conn.join()
            log.info("%s joined as worker %d of %d", name, joined.worker_index + 1, joined.num_workers)
            while True:
                received = conn.pull(version)
                if received is None:
                    log.info("%s: training finished after %d steps", name, result.steps)
                    return result
                global_weights = received.tensors.cast_to(specs)
                if compressor is not None:  # the reference of the change: safe from the model's training
                    global_weights = TensorSet(global_weights.specs, [a.copy() for a in global_weights.arrays])
                version = received.version
                try:
                    model.set_weights(global_weights.arrays)  # the model's code: its faults are reported too
                    evaluation = _evaluate(model, data, version, strategy)  # the global model, before training
                    update = strategy.make_update(model, data, version)
                    if evaluation:
                        update = replace(
                            update, info=replace(update.info, metrics={**update.info.metrics, **evaluation})
                        )
                    if compressor is not None:
                        update = compressor.compress(update, strategy.update_reference(global_weights))
                except TdxflError as e:
                    conn.leave(str(e))
                    raise
                except Exception as e:  # the model's own code failed: tell the PS why, then stop
                    reason = f"{name}: training failed: {type(e).__name__}: {e}"
                    conn.leave(reason)
                    raise TaskError(reason) from e
                answer = conn.push(update)
                result.steps += 1
                result.losses.append(float(update.info.metrics.get("loss", float("nan"))))
                if not answer.accepted:
                    result.rejected += 1
                    log.warning("%s: update for version %d refused: %s", name, version, answer.reason)
        except LinkError as e:
            result.reconnects += 1
            if result.reconnects > max_reconnects:
                raise Unavailable(f"lost the parameter server too often: {e}") from e
            log.warning("%s: connection lost (%s); reconnecting", name, e)
        finally:
            conn.close()


def _evaluate(model: ModelAdapter, data: LocalData, version: int, strategy: Strategy) -> dict[str, float]:
    """This worker's evaluation of the global model it holds, on its own validation data, when
    that model starts a round (and there is validation data); else nothing."""
    if data.x_val is None or data.y_val is None or version % strategy.steps_per_round:
        return {}
    loss, accuracy = model.evaluate(data.x_val, data.y_val)
    return {VAL_LOSS: loss, VAL_ACCURACY: accuracy, VAL_SAMPLES: float(len(data.y_val))}
