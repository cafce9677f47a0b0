"""P5: ``tdxfl demo`` wall time vs the same training in one process without federation.

``python -m bench.p5_demo demo --workdir DIR [--rounds R]`` runs ``python -m tdxfl demo
--summary-json`` (1 PS + 2 worker processes, each importing TensorFlow, sync-gradients,
small_cnn on digits, Adam lr 0.002, 2 workers x batch 32, ``rounds x 25`` steps, evaluation
every round, sealed checkpoints; the demo's own process, which sets up the broker's keystore and
at the end, as the trusted node, unseals the model and checks its accuracy with numpy, imports no
TensorFlow) and reports its wall time and accuracy.

``python -m bench.p5_demo single --rounds R`` is the baseline, meant to run as its own process
so that it pays the TensorFlow import too: the same model, seed, data, optimizer (Keras Adam,
lr 0.002, epsilon 1e-7 like the PS's), batch 64 (= 2 x 32), ``R x 25`` steps and one evaluation
per 25 steps. It prints its own wall time from interpreter start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

_T0 = time.monotonic()

STEPS_PER_ROUND = 25  # tdxfl.wiring.demo.demo_federation for sync-gradients


def demo_main(args: argparse.Namespace) -> None:
    from bench.common import PYTHON, REPO, bench_env

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary = workdir / "summary.json"
    cmd = [PYTHON, "-m", "tdxfl", "demo", "--workdir", str(workdir / "run"), "--summary-json", str(summary)]
    if args.rounds:
        cmd += ["--set", f"training.rounds={args.rounds}"]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t
    s = json.loads(summary.read_text()) if summary.exists() else {}
    print(
        json.dumps(
            {
                "wall_s": wall,
                "demo_wall_s": s.get("wall_s"),
                "accuracy": s.get("accuracy"),
                "rounds": s.get("rounds"),
                "ok": proc.returncode == 0 and bool(s.get("ok")),
            }
        )
    )


def single_main(args: argparse.Namespace) -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from tdxfl.engine.data import batches
    from tdxfl.ml.data import load_dataset
    from tdxfl.ml.keras_adapter import KerasAdapter
    from tdxfl.ml.models import build_model

    import_s = time.monotonic() - _T0
    data = load_dataset("digits", None, seed=0)
    adapter = KerasAdapter(build_model("small_cnn", data.input_shape, data.num_classes, seed=0))
    opt, step = adapter._train_fn("adam")  # Keras Adam (epsilon 1e-7), compiled once
    opt.learning_rate = 0.002
    it = batches(data.x_train, data.y_train, 64, seed=0)
    acc = 0.0
    for _ in range(args.rounds):
        for _ in range(STEPS_PER_ROUND):
            xb, yb = next(it)
            step(xb, yb.astype("int32"))
        _, acc = adapter.evaluate(data.x_test, data.y_test)
    print(
        json.dumps(
            {
                "wall_s": time.monotonic() - _T0,
                "import_s": import_s,
                "accuracy": acc,
                "steps": args.rounds * STEPS_PER_ROUND,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--workdir", required=True)
    d.add_argument("--rounds", type=int, default=0)
    s = sub.add_parser("single")
    s.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    (demo_main if args.cmd == "demo" else single_main)(args)


if __name__ == "__main__":
    sys.exit(main())
