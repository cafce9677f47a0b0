"""The worker's loop: join the parameter server, then for every model version it publishes,
compute the strategy's update on local data and push it, until the PS says training is over.

It runs against any ``ServerConnection`` (attested or in memory); a connection that breaks is
replaced by a new one from ``connect``, up to ``max_reconnects`` times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from tdxfl.engine.data import LocalData
from tdxfl.engine.fleet import ServerConnection
from tdxfl.engine.model import ModelAdapter
from tdxfl.engine.strategy import Strategy
from tdxfl.errors import LinkError, Unavailable

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
) -> WorkerResult:
    """Train until the PS finishes and return what was done.

    ``connect()`` opens a connection to the PS (its own errors, e.g. an attestation refusal or
    an unreachable PS, end the loop); a connection that breaks (LinkError) is replaced, and after
    ``max_reconnects`` replacements the loop raises Unavailable.
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
                model.set_weights(received.tensors.cast_to(specs).arrays)
                version = received.version
                update = strategy.make_update(model, data, version)
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
