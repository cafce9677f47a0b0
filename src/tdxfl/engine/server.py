"""The parameter server's round loop: publish the global model, collect a quorum of updates,
aggregate with the strategy, evaluate and report every round.

It runs against any ``Fleet`` (attested or in memory) and knows nothing of the network, the
framework or the disk: evaluation and what happens after each round (metrics, checkpoints) are
callbacks supplied by the wiring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tdxfl.engine.clock import Clock, MonotonicClock
from tdxfl.engine.fleet import VAL_ACCURACY, VAL_LOSS, VAL_SAMPLES, Fleet
from tdxfl.engine.kinds import OnTimeout
from tdxfl.engine.records import TensorSet
from tdxfl.engine.strategy import Strategy

__all__ = ["RoundMetrics", "RoundPlan", "TrainingResult", "run_rounds"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds, and how the PS waits for updates."""

    rounds: int
    quorum: int  # minimum updates per step
    step_timeout_s: float
    on_timeout: OnTimeout
    join_timeout_s: float  # for the first workers, and the grace below the quorum
    target_accuracy: float = 0.0  # stop early once reached (0: never)


@dataclass(frozen=True)
class RoundMetrics:
    """What the parameter server measured in one round."""

    round: int
    version: int
    loss: float
    accuracy: float
    train_loss: float
    bytes_in: int
    bytes_out: int
    round_s: float
    contributors: int
    rejected: int
    #: the workers' evaluation, on their own validation data, of the model this round started
    #: from, weighted by their validation samples (NaN and 0 when no worker has validation data)
    worker_val_loss: float = float("nan")
    worker_val_accuracy: float = float("nan")
    worker_val_samples: int = 0
    #: the differential-privacy epsilon spent so far (central DP only)
    epsilon: float | None = None


@dataclass(frozen=True)
class TrainingResult:
    """Outcome of a completed federation, as the parameter server saw it."""

    rounds: int
    version: int
    accuracy: float
    loss: float
    wall_s: float


Evaluate = Callable[[TensorSet], tuple[float, float]]
OnRound = Callable[[RoundMetrics, TensorSet], None]


def run_rounds(
    fleet: Fleet,
    strategy: Strategy,
    weights: TensorSet,
    plan: RoundPlan,
    *,
    evaluate: Evaluate,
    on_round: OnRound,
    on_status: Callable[[str], None] = lambda status: None,
    clock: Clock | None = None,
    resume: RoundMetrics | None = None,
) -> TrainingResult:
    """Train ``weights`` in place for ``plan.rounds`` rounds (fewer once the target accuracy is
    reached) and return the outcome; FederationError when the fleet cannot go on.

    Every round: ``strategy.steps_per_round`` steps of ``strategy.begin_step``, publish, collect,
    retire and ``strategy.apply``; then ``evaluate(weights) -> (loss, accuracy)`` and
    ``on_round(metrics, weights)`` (with the strategy's epsilon under differential privacy). The
    caller calls ``fleet.finish()`` (also when this raises).

    ``resume``: the last round of a checkpoint that ``weights`` (and the strategy's state) come
    from; training goes on after it, from its model version.
    """
    clock = clock or MonotonicClock()
    started = clock.now()
    steps = strategy.steps_per_round
    done = resume.round if resume else 0
    r = done
    version = resume.version if resume else 0
    loss, accuracy = (resume.loss, resume.accuracy) if resume else (float("nan"), float("nan"))
    if resume and plan.target_accuracy and accuracy >= plan.target_accuracy:
        return TrainingResult(r, version, accuracy, loss, 0.0)
    if done < plan.rounds:
        fleet.wait_for_workers(plan.quorum, plan.join_timeout_s)
    for r in range(done + 1, plan.rounds + 1):
        on_status(f"training round {r}")
        t0, in0, out0 = clock.now(), fleet.bytes_in, fleet.bytes_out
        contributors = rejected = 0
        train_loss = 0.0
        evaluation: dict[str, float] = {}
        for _ in range(steps):
            strategy.begin_step(weights)
            fleet.publish(version, weights)  # may share weights' memory until retire
            step = fleet.collect(
                plan.quorum,
                plan.step_timeout_s,
                fail_on_timeout=plan.on_timeout is OnTimeout.FAIL,
                grace=plan.join_timeout_s,
            )
            fleet.retire(plan.step_timeout_s)  # no worker is reading the weights now
            strategy.apply(weights, step.mean)
            version += 1
            contributors += len(step.contributors)
            rejected += len(step.rejected)
            train_loss += step.metrics.get("loss", float("nan"))
            evaluation = evaluation or {
                k: v for k, v in step.metrics.items() if k in (VAL_LOSS, VAL_ACCURACY, VAL_SAMPLES)
            }
        loss, accuracy = evaluate(weights)
        metrics = RoundMetrics(
            round=r,
            version=version,
            loss=loss,
            accuracy=accuracy,
            train_loss=train_loss / steps,
            bytes_in=fleet.bytes_in - in0,
            bytes_out=fleet.bytes_out - out0,
            round_s=clock.now() - t0,
            contributors=contributors,
            rejected=rejected,
            worker_val_loss=evaluation.get(VAL_LOSS, float("nan")),
            worker_val_accuracy=evaluation.get(VAL_ACCURACY, float("nan")),
            worker_val_samples=int(evaluation.get(VAL_SAMPLES, 0)),
            epsilon=strategy.epsilon(),
        )
        on_round(metrics, weights)
        if plan.target_accuracy and accuracy >= plan.target_accuracy:
            log.info("target accuracy %.3f reached in round %d", plan.target_accuracy, r)
            break
    return TrainingResult(r, version, accuracy, loss, clock.now() - started)
