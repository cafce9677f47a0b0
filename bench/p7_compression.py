"""P7: compressed uplink updates (``training.compression``), each mode against fp32 in the same run.

- ``bytes``: bytes a worker pushes per sync step for each mode, from the encoder itself on the
  ResNet-50 specs (random gradients; the sizes depend only on the shapes).
- ``cpu``: the PS's cost per update: decode into its preallocated float32 buffers plus the
  NaN/Inf check plus the accumulate, against fp32's receive (copy in, check, accumulate).
- ``accuracy``: the built-in digits small CNN on the in-memory fleet, two workers, same seed,
  final accuracy per mode (sync-gradients).

``python -m bench.p7_compression bytes|cpu|accuracy`` prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import load_specs, log, median, random_set

MODES: list[tuple[str, float]] = [("int8", 0.0), ("int4", 0.0), ("topk", 0.01), ("topk", 0.001)]


def _label(codec: str, fraction: float) -> str:
    return codec if codec != "topk" else f"topk-{fraction:g}"


def _compress(codec: str, fraction: float, update: Any) -> Any:
    from tdxfl.engine.compression import Codec, Compressor
    from tdxfl.engine.fleet import Update, UpdateInfo
    from tdxfl.engine.kinds import UpdateKind

    c = Compressor(Codec(codec), topk_fraction=fraction or 0.01)
    return c.compress(Update(UpdateInfo(UpdateKind.GRADIENTS, 0, 1), update), [None] * len(update.arrays))


def p7_bytes() -> dict[str, Any]:
    specs, _ = load_specs()
    grads = random_set(specs, 1, 0.01)
    fp32 = grads.nbytes
    rows = {}
    for codec, fraction in MODES:
        out = _compress(codec, fraction, grads)
        rows[_label(codec, fraction)] = {"bytes": out.wire_bytes, "reduction": fp32 / out.wire_bytes}
    return {"fp32_bytes": fp32, "modes": rows}


def p7_cpu(reps: int) -> dict[str, Any]:
    """Per update: fp32 = copy the received bytes in + finite check + accumulate; compressed =
    decode (checks included) + finite check + accumulate. Same buffers, interleaved."""
    from tdxfl.engine.compression import Codec, decode_into
    from tdxfl.engine.strategy import RoundAccumulator
    from tdxfl.transport.tensors import _byte_view

    specs, _ = load_specs()
    grads = random_set(specs, 1, 0.01)
    raw = [np.ascontiguousarray(a).view(np.uint8).reshape(-1).copy() for a in grads.arrays]
    enc = {(c, f): _compress(c, f, grads).payload for c, f in MODES}
    bufs = [np.empty(s.shape, np.float32) for s in specs]
    acc = RoundAccumulator(specs)
    from tdxfl.engine.records import TensorSet

    def fp32() -> None:
        for b, r in zip(bufs, raw):
            _byte_view(b)[:] = r.data
        ts = TensorSet(specs, bufs)
        ts.check_finite()
        acc.add(ts, 1.0, finite_checked=True)

    def decode(key: tuple[str, float]) -> None:
        for b, p in zip(bufs, enc[key]):
            decode_into(Codec(key[0]), p, b)
        acc.add(TensorSet(specs, bufs), 1.0, finite_checked=True)

    times: dict[str, list[float]] = {"fp32": []} | {_label(*k): [] for k in MODES}
    for _ in range(reps + 1):  # the first is warm-up
        t = time.perf_counter()
        fp32()
        times["fp32"].append(time.perf_counter() - t)
        for k in MODES:
            t = time.perf_counter()
            decode(k)
            times[_label(*k)].append(time.perf_counter() - t)
    med = {k: median(v[1:]) for k, v in times.items()}
    return {
        "fp32_s": med["fp32"],
        "modes": {k: {"s": v, "ratio": v / med["fp32"]} for k, v in med.items() if k != "fp32"},
    }


def p7_accuracy(rounds: int, steps: int) -> dict[str, Any]:
    from tdxfl.engine.compression import Codec, Compressor
    from tdxfl.engine.data import LocalData
    from tdxfl.engine.kinds import OnTimeout
    from tdxfl.engine.memory import SimulatedWorker, simulate
    from tdxfl.engine.optimizers import Adam
    from tdxfl.engine.server import RoundPlan
    from tdxfl.engine.strategy import SyncGradients
    from tdxfl.ml.task import Shard
    from tdxfl.wiring.tasks import open_task

    task, _ = open_task("tdxfl.ml.tasks.digits_small_cnn", Path("."))
    workers = ["w1", "w2"]
    test = task.load_data("", "ps")
    shards = [task.load_data("", "worker", Shard(i, 2, seed=0)) for i in range(2)]

    def run(mode: str, fraction: float, feedback: bool) -> float:
        server = task.build_adapter(test.x[:8])
        strategy = SyncGradients(Adam(0.002), server.trainable_mask(), steps_per_round=steps)
        sims = []
        for i, name in enumerate(workers):
            model = task.build_adapter(shards[i].x[:8])
            comp = (
                None
                if mode == "none"
                else Compressor(Codec(mode), topk_fraction=fraction or 0.01, error_feedback=feedback)
            )
            own = SyncGradients(Adam(0.002), model.trainable_mask(), steps_per_round=steps)
            sims.append(SimulatedWorker(name, model, own, LocalData(shards[i].x, shards[i].y, 32, i), comp))
        plan = RoundPlan(
            rounds=rounds, quorum=2, step_timeout_s=120.0, on_timeout=OnTimeout.CONTINUE, join_timeout_s=120.0
        )
        res = simulate(server, strategy, plan, sims, test.evaluation()).result
        return float(res.accuracy)

    out: dict[str, Any] = {}
    for mode, fraction, feedback in [("none", 0.0, True)] + [(c, f, True) for c, f in MODES] + [("topk", 0.01, False)]:
        label = "fp32" if mode == "none" else _label(mode, fraction) + ("" if feedback else "-no-ef")
        t = time.perf_counter()
        out[label] = run(mode, fraction, feedback)
        log(f"P7-accuracy {label}: {out[label]:.4f} ({time.perf_counter() - t:.0f} s)")
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "bytes":
        print(json.dumps(p7_bytes()))
    elif what == "cpu":
        print(json.dumps(p7_cpu(int(sys.argv[2]) if len(sys.argv) > 2 else 5)))
    else:
        print(
            json.dumps(
                p7_accuracy(int(sys.argv[2]) if len(sys.argv) > 2 else 3, int(sys.argv[3]) if len(sys.argv) > 3 else 20)
            )
        )
