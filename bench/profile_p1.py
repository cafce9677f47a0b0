"""Profile P1's secure round with py-spy (``.venv/bin/pip install py-spy``).

``python -m bench.profile_p1 [--rounds N] [--out DIR]`` runs the P1 PS (secure rounds only)
under ``py-spy record --subprocesses --format raw`` (collapsed stacks, 100 Hz, non-idle
samples only: threads blocked in a wait are not counted, threads running C code with the GIL
released are) and prints, per process (PS / worker), the functions with the most samples, by
self and by inclusive count. The raw profile stays in ``--out`` for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import PYTHON, REPO, bench_env, log


def summarize(raw: Path, top: int) -> str:
    by_proc: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        proc = "worker" if procs and " worker " in procs[-1] else "ps"
        totals[proc] += n
        funcs = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
            for f in frames
            if not f.startswith("process ")
        ]
        if funcs:
            by_proc[proc][funcs[-1]] += n
        for f in set(funcs):
            incl[proc][f] += n
    out = []
    for proc in sorted(by_proc):
        out.append(f"== {proc}: {totals[proc]} samples ==")
        out.append("  self:")
        for f, n in by_proc[proc].most_common(top):
            out.append(f"    {n / totals[proc]:6.1%}  {f}")
        out.append("  inclusive:")
        for f, n in incl[proc].most_common(top * 2):
            out.append(f"    {n / totals[proc]:6.1%}  {f}")
    return "\n".join(out)


def _cli_summary() -> None:
    print(summarize(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 15))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "summarize":  # re-summarize a saved raw profile
        return _cli_summary()
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=str(REPO / "bench" / "profiles"))
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "p1_secure.raw.txt"
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        cmd = [
            pyspy,
            "record",
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "100",
            "-o",
            str(raw),
            "--",
            PYTHON,
            "-m",
            "bench.p1_round",
            "ps",
            "--workdir",
            tmp,
            "--schedule",
            ",".join(["secure"] * args.rounds),
        ]
        log("profiling: " + " ".join(cmd))
        subprocess.run(cmd, cwd=REPO, env=bench_env(), check=True, stdout=subprocess.DEVNULL)
    text = summarize(raw, args.top)
    (out / "p1_secure.summary.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
