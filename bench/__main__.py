"""tdxfl benchmark suite: ``python -m bench [--only ID ...] [--quick]`` (or ``bench/run``).

Each result is one JSON line on stdout::

    {"id": "P1", "value": ..., "baseline": ..., "ratio": ..., "target": ..., "unit": "...", "ok": true, "detail": {...}}

Progress goes to stderr. Baselines are measured in the same run (P1's raw-TLS baseline even in
the same processes, interleaved round by round). See bench/README.md for what each ID means.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import MB, log, median, result, run_json, spawn

GROUPS: dict[str, tuple[str, ...]] = {
    "P1": ("P1", "P1b", "P1-fp16", "P1-bf16"),
    "P1-wire": ("P1b-10GbE", "P1b-1GbE"),
    "P2": ("P2",),
    "P3": ("P3", "P3-tdx"),
    "P4": ("P4-write", "P4-read"),
    "P5": ("P5",),
    "MICRO": ("MICRO-receive", "MICRO-unseal"),
    "P7": ("P7-bytes", "P7-cpu", "P7-accuracy"),
}


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; includes other users' work)."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def settle(max_wait: float) -> float:
    """Wait (up to ``max_wait`` s) for the machine to be mostly idle; return the busy fraction seen."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > 0.3 and time.monotonic() < deadline:
        log(f"machine {busy:.0%} busy (other work); waiting for it to quiet down")
        busy = cpu_busy(2.0)
    return busy


# -- groups ------------------------------------------------------------------------------------
def run_p1(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    from bench.p1_round import summarize

    cycles = reps or (2 if quick else 5)
    cycle = ["tls", "tcp", "secure", "insecure", "fp16", "bf16"]
    schedule = cycle * (cycles + 1)  # first cycle is warm-up
    data = run_json("p1_round", "ps", "--workdir", str(tmp / "p1"), "--schedule", ",".join(schedule))
    s = summarize(data, warmup=len(cycle))
    rounds = [r for r in data["rounds"] if r["version"] >= len(cycle)]

    def paired(a: str, b: str) -> float:
        """Median over cycles of round(a) / round(b) (each cycle's rounds are seconds apart)."""
        by_cycle: dict[int, dict[str, float]] = {}
        for r in rounds:
            by_cycle.setdefault(r["version"] // len(cycle), {})[r["mode"]] = r["round_s"]
        return median([c[a] / c[b] for c in by_cycle.values() if a in c and b in c])

    mb = data["model_bytes"] / MB
    sec, tls, tcp, ins, f16, b16 = (s[m]["round_s"] for m in ("secure", "tls", "tcp", "insecure", "fp16", "bf16"))
    phases = {m: {k: v for k, v in s[m].items() if k != "n"} for m in s}
    yield result(
        "P1",
        sec,
        tls,
        1.3,
        "s/round",
        ok=sec / tls <= 1.3,
        model_MB=mb,
        rounds_per_mode=cycles,
        paired_ratio=paired("secure", "tls"),
        tls_cipher=data.get("tls_cipher"),
        phases_s=phases,
    )
    yield result(
        "P1b",
        sec,
        ins,
        1.10,
        "s/round",
        ok=sec / ins <= 1.10,
        paired_ratio=paired("secure", "insecure"),
        secure_overhead_pct=(sec / ins - 1) * 100,
        raw_tls_over_raw_tcp=tls / tcp,
        raw_tcp_round_s=tcp,
        paired_raw_tls_over_raw_tcp=paired("tls", "tcp"),
        note="raw_tls_over_raw_tcp is the cost of TLS itself on this machine (same bytes, same pattern, "
        "no framework): no TLS transport can be below it",
    )
    yield result(
        "P1-fp16",
        f16,
        sec,
        None,
        "s/round",
        ok=True,
        paired_ratio=paired("fp16", "secure"),
        note="informational: fp16 push (upload halves), baseline = fp32 secure round",
    )
    yield result(
        "P1-bf16",
        b16,
        sec,
        None,
        "s/round",
        ok=True,
        paired_ratio=paired("bf16", "secure"),
        note="informational: bfloat16 push (upload halves), baseline = fp32 secure round",
    )


def run_p1_wire(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    """P1b where the wire is the limit: the same rounds with all traffic through a loopback
    shaped to 10 and 1 Gbit/s (a network namespace; needs root and iproute2)."""
    from bench.netns import shaped_loopback
    from bench.p1_round import summarize

    cycle = ["tcp", "secure", "insecure"]
    for rid, mbit, cycles in (("P1b-10GbE", 10_000, reps or (2 if quick else 4)), ("P1b-1GbE", 1_000, 2)):
        try:
            with shaped_loopback(mbit) as prefix:
                data = run_json(
                    "p1_round",
                    "ps",
                    "--workdir",
                    str(tmp / rid),
                    "--schedule",
                    ",".join(cycle * (cycles + 1)),
                    prefix=prefix,
                )
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            yield {
                "id": rid,
                "value": None,
                "baseline": None,
                "ratio": None,
                "target": 1.10,
                "unit": "s/round",
                "ok": False,
                "error": f"no shaped loopback here (needs root and iproute2): {e}",
            }
            continue
        s = summarize(data, warmup=len(cycle))
        sec, ins, tcp = (s[m]["round_s"] for m in ("secure", "insecure", "tcp"))
        yield result(
            rid,
            sec,
            ins,
            1.10,
            "s/round",
            ok=sec / ins <= 1.10,
            link_mbit=mbit,
            rounds_per_mode=cycles,
            raw_tcp_round_s=tcp,
            secure_overhead_pct=(sec / ins - 1) * 100,
            note="informational: P1b with the PS's traffic through a link of this rate "
            "(all flows share it, as a server's NIC); raw_tcp = the wire's own floor",
        )


def run_p2(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    ns = [2, 32] if quick else [2, 4, 8, 16, 32]

    def sweep(label: str, ns: list[int], *extra: str) -> dict[int, Any]:
        return {
            n: run_json("p2_memory", "ps", "--workers", str(n), "--workdir", str(tmp / f"p2-{label}-{n}"), *extra)
            for n in ns
        }

    runs = sweep("link", ns, "--tracemalloc")
    model = runs[2]["model_bytes"]
    g = {n: r["growth_bytes"] for n, r in runs.items()}
    diff = (g[32] - g[2]) / MB
    yield result(
        "P2",
        diff,
        model / MB,
        2.0,
        "MB (peak growth 32 workers - 2 workers)",
        ok=diff / (model / MB) < 2.0,
        growth_MB_by_workers={str(n): v / MB for n, v in g.items()},
        growth_32_over_2=g[32] / g[2],
        python_peak_MiB_by_workers={str(n): r["tracemalloc"]["peak_MiB"] for n, r in runs.items()},
        growth_MiB_by_phase_32=runs[32]["growth_MiB_by_phase"],
        round_s_by_workers={str(n): r["round_s"] for n, r in runs.items()},
        worker_processes={str(n): r["procs"] for n, r in runs.items()},
    )


def run_p3(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    server = spawn("p3_connect", "serve", "--workdir", str(tmp / "p3"), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        fed = json.loads(server.stdout.readline())["fed"]
        c = run_json("p3_connect", "client", "--fed", fed, "--reps", str(reps or (8 if quick else 20)))
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)
    extra = c["ratls"] - c["tls"]
    yield result(
        "P3",
        extra,
        c["tls"],
        20.0,
        "ms extra per connection",
        ok=extra <= 20.0,
        ratio=c["ratls"] / c["tls"],
        ratls_ms=c["ratls"],
        plain_tls_ms=c["tls"],
        plain_tls_enroll_ms=c["tls_enroll"],
        mtls_enrolled_ms=c["mtls"],
        ratls_breakdown_ms=c["breakdown_ms"],
    )
    t = run_json("p3_connect", "tdx", "--reps", str(reps or (10 if quick else 30)))
    yield result(
        "P3-tdx",
        t["verify_ms"],
        t["raw_qvl_ms"],
        20.0,
        "ms per TdxVerifier.verify",
        ok=t["verify_ms"] <= 20.0,
        cold_first_call_ms=t["cold_ms"],
        tcb_status=t["tcb_status"],
        note="baseline = bare dcap_qvl.verify_with_policy on preloaded collateral",
    )


def run_p4(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    d = run_json("p4_sealed", "--reps", str(reps or (2 if quick else 5)), "--dir", str(tmp / "p4"))
    w = d["sealed_write_MBps"] / d["plain_write_MBps"]
    r = d["sealed_read_MBps"] / d["plain_read_MBps"]
    yield result(
        "P4-write",
        d["sealed_write_MBps"],
        d["plain_write_MBps"],
        0.7,
        "MB/s",
        ok=w >= 0.7,
        ratio=w,
        sealed_s=d["sealed_write_s"],
        plain_s=d["plain_write_s"],
        fsync="both: file fsync + os.replace + dir fsync",
    )
    yield result(
        "P4-read",
        d["sealed_read_MBps"],
        d["plain_read_MBps"],
        0.7,
        "MB/s",
        ok=r >= 0.7,
        ratio=r,
        sealed_s=d["sealed_read_s"],
        plain_s=d["plain_read_s"],
        sealed_old_path_s=d["sealed_read_old_path_s"],
        old_path_ratio=d["sealed_read_old_path_MBps"] / d["plain_read_MBps"],
        note="both read from the page cache; old path = readinto before ccfb576 (decrypt + copy)",
    )


def run_p5(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    from bench.common import PYTHON, REPO, bench_env

    rounds = 2 if quick else 8
    t = time.monotonic()
    proc = subprocess.run(
        [PYTHON, "-m", "bench.p5_demo", "single", "--rounds", str(rounds)],
        cwd=REPO,
        env=bench_env(),
        stdout=subprocess.PIPE,
        check=True,
    )
    single_wall = time.monotonic() - t  # from the parent: interpreter start + TF import included
    single = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    demo = run_json("p5_demo", "demo", "--workdir", str(tmp / "p5"), *(["--rounds", str(rounds)] if quick else []))
    ratio = demo["wall_s"] / single_wall
    yield result(
        "P5",
        demo["wall_s"],
        single_wall,
        2.0,
        "s wall",
        ok=ratio <= 2.0 and demo["ok"],
        ratio=ratio,
        demo_accuracy=demo["accuracy"],
        single_accuracy=single["accuracy"],
        rounds=rounds,
        steps=single["steps"],
        single_tf_import_s=single["import_s"],
        note="target is an aim",
    )


def run_micro(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    m = run_json("micro", "--reps", str(reps or (2 if quick else 5)))
    yield result(
        "MICRO-receive",
        m["receive"],
        m["receive_old"],
        None,
        "MB/s",
        ok=True,
        to_wire_fp16_s=m["to_wire_fp16_s"],
        to_wire_bf16_s=m["to_wire_bf16_s"],
        as_dtype_fp16_s=m["as_dtype_fp16_s"],
        as_dtype_bf16_s=m["as_dtype_bf16_s"],
        note="value: the PS's work on one update's bytes as shipped (NaN check as they land + blockwise "
        "add); baseline: a NaN pass + add with temporaries (before); 94 MB set",
    )
    yield result(
        "MICRO-unseal",
        m["unseal_read"],
        m["unseal_old"],
        None,
        "MB/s",
        ok=True,
        note="value: SealedReader.readinto as shipped (decrypt_into the target); baseline: the old decrypt + copy path",
    )


def run_p7(tmp: Path, quick: bool, reps: int | None) -> Iterator[dict[str, Any]]:
    """Compressed uplink updates, every mode against fp32 in the same run (bench/p7_compression.py)."""
    b = run_json("p7_compression", "bytes")
    best = max(b["modes"].items(), key=lambda kv: kv[1]["reduction"])
    yield result(
        "P7-bytes",
        best[1]["bytes"] / MB,
        b["fp32_bytes"] / MB,
        1 / 8,
        "MB pushed per sync step (ResNet-50)",
        ok=best[1]["reduction"] >= 8,
        best_mode=best[0],
        modes=b["modes"],
    )
    c = run_json("p7_compression", "cpu", str(reps or (3 if quick else 7)))
    worst = max(c["modes"].items(), key=lambda kv: kv[1]["ratio"])
    yield result(
        "P7-cpu",
        worst[1]["s"],
        c["fp32_s"],
        1.5,
        "s per update (PS decode + check + accumulate; worst mode)",
        ok=all(m["ratio"] <= 1.5 for m in c["modes"].values()),
        worst_mode=worst[0],
        modes=c["modes"],
    )
    a = run_json("p7_compression", "accuracy", "2" if quick else "8", "10" if quick else "25", timeout=1800)
    fp32 = a.pop("fp32")
    ef = {k: v for k, v in a.items() if not k.endswith("-no-ef")}
    best_acc = max(ef.items(), key=lambda kv: kv[1])
    yield result(
        "P7-accuracy",
        best_acc[1],
        fp32,
        -0.005,
        "final accuracy (digits small CNN, sync-gradients)",
        ok=all(v >= fp32 - 0.005 for v in ef.values()),
        ratio=best_acc[1] - fp32,
        modes=a,
        note="ratio is the difference in accuracy to fp32; ok when every error-feedback mode is within 0.5 points",
    )


RUNNERS: dict[str, Callable[[Path, bool, int | None], Iterator[dict[str, Any]]]] = {
    "P1": run_p1,
    "P1-wire": run_p1_wire,
    "P2": run_p2,
    "P3": run_p3,
    "P4": run_p4,
    "P5": run_p5,
    "P7": run_p7,
    "MICRO": run_micro,
}


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ID",
        help="run only this ID or group (P1, P1b, P1-fp16, P1-bf16, P1-wire, P1b-10GbE, P1b-1GbE, P2, P3, P3-tdx, P4, "
        "P4-write, P4-read, P5, MICRO); repeatable",
    )
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, smaller sweeps (a smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="override the repetition count of every group")
    ap.add_argument(
        "--settle", type=float, default=10.0, help="max seconds to wait for an idle machine before each group"
    )
    args = ap.parse_args()
    wanted = {w for item in args.only for w in item.split(",") if w}
    unknown = wanted - set(GROUPS) - {i for ids in GROUPS.values() for i in ids}
    if unknown:
        ap.error(f"unknown ID(s): {', '.join(sorted(unknown))}")
    failed = 0
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tdxfl-bench-") as tmp:
        for group, ids in GROUPS.items():
            if wanted and group not in wanted and not wanted & set(ids):
                continue
            busy = settle(args.settle)
            log(f"running {group} (machine {busy:.0%} busy beforehand)")
            t = time.monotonic()
            try:
                for rec in RUNNERS[group](Path(tmp), args.quick, args.reps):
                    if wanted and group not in wanted and rec["id"] not in wanted:
                        continue
                    rec.setdefault("detail", {})["machine_busy_before"] = round(busy, 2)
                    print(json.dumps(rec), flush=True)
                    failed += not rec["ok"]
            except Exception as e:
                log(f"{group} failed: {type(e).__name__}: {e}")
                for rid in ids:
                    if not wanted or group in wanted or rid in wanted:
                        print(
                            json.dumps(
                                {
                                    "id": rid,
                                    "value": None,
                                    "baseline": None,
                                    "ratio": None,
                                    "target": None,
                                    "unit": "",
                                    "ok": False,
                                    "error": f"{type(e).__name__}: {e}",
                                }
                            ),
                            flush=True,
                        )
                        failed += 1
            log(f"{group} done in {time.monotonic() - t:.1f}s")
    log(f"all done in {time.monotonic() - t_all:.1f}s; {failed} result(s) not ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
