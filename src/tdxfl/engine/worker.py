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
from tdxfl.engine.fleet import PROGRESS_LOGGER, VAL_ACCURACY, VAL_LOSS, VAL_SAMPLES, RunEnd, ServerConnection
from tdxfl.engine.kinds import RunStatus
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import Strategy
from tdxfl.errors import FederationError, LinkError, TaskError, TdxflError, Unavailable

__all__ = ["WorkerResult", "run_worker_loop"]

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


@dataclass
class WorkerResult:
    """What a worker did."""

    steps: int = 0
    rejected: int = 0
    reconnects: int = 0
    losses: list[float] = field(default_factory=list)
    #: the run it trained for last (the PS's run id)
    run_id: str = ""


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
    """Train until the PS says the run completed and return what was done; FederationError with
    the PS's reason when it says the run failed or was interrupted.

    ``connect()`` opens a connection to the PS (its own errors, e.g. an attestation refusal or
    an unreachable PS, end the loop); a connection that breaks (LinkError) is replaced, and after
    ``max_reconnects`` replacements the loop raises Unavailable. With a ``compressor``, each
    update is sent compressed as its change against the global model just received (error
    feedback state lives in the compressor, across reconnects).

    A (re)join into a run or PS session other than the last one (a restarted PS, resumed or
    not) takes the PS's current model instead of waiting for a version newer than its own.
    """
    result = WorkerResult()
    specs = model.specs()
    version = -1
    served: tuple[str, str] | None = None  # the (run id, PS session) the worker last trained for
    while True:
        conn = connect()
        try:
            joined = conn.join()
            if served is not None and served != (joined.run_id, joined.session):
                version = -1
                progress.info("%s: the parameter server restarted; taking its current model", name)
            served = (joined.run_id, joined.session)
            result.run_id = joined.run_id
            progress.info(
                "%s joined run %s as worker %d of %d", name, joined.run_id, joined.worker_index + 1, joined.num_workers
            )
            while True:
                received = conn.pull(version)
                if isinstance(received, RunEnd):
                    return _finished(name, result, received)
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
                loss = float(update.info.metrics.get("loss", float("nan")))
                result.losses.append(loss)
                if not answer.accepted:
                    result.rejected += 1
                    log.warning("%s: update for version %d refused: %s", name, version, answer.reason)
                elif version % strategy.steps_per_round == strategy.steps_per_round - 1:  # a round's last step
                    progress.info(
                        "%s: round %d sent (model version %d, training loss %.4f)",
                        name,
                        version // strategy.steps_per_round + 1,
                        version,
                        loss,
                    )
        except LinkError as e:
            result.reconnects += 1
            if result.reconnects > max_reconnects:
                raise Unavailable(f"lost the parameter server too often: {e}") from e
            log.warning("%s: connection lost (%s); reconnecting", name, e)
        finally:
            conn.close()


def _finished(name: str, result: WorkerResult, end: RunEnd) -> WorkerResult:
    """``result`` when the run completed; FederationError with the PS's reason otherwise."""
    if end.status is RunStatus.COMPLETED:
        progress.info("%s: training completed after %d updates", name, result.steps)
        return result
    raise FederationError(f"the parameter server ended the run: {end} (after {result.steps} updates from {name})")


def _evaluate(model: ModelAdapter, data: LocalData, version: int, strategy: Strategy) -> dict[str, float]:
    """This worker's evaluation of the global model it holds, on its own validation data, when
    that model starts a round (and there is validation data); else nothing."""
    if data.x_val is None or data.y_val is None or version % strategy.steps_per_round:
        return {}
    loss, accuracy = model.evaluate(data.x_val, data.y_val)
    return {VAL_LOSS: loss, VAL_ACCURACY: accuracy, VAL_SAMPLES: float(len(data.y_val))}
