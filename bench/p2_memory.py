"""P2: parameter-server peak memory during one round, against the number of workers.

``python -m bench.p2_memory ps --workers N --params P --workdir DIR``

A fresh PS process per N (VmHWM only grows): the real ``AttestedServer`` + ``LinkServer`` +
``ParameterServerService`` + ``RoundState``, N separately enrolled worker parties (simulated
attestation, each its own key, certificate, gRPC channel and tensor link) spread over at most
``--procs`` lightweight worker processes (threads, no TensorFlow). Every party pulls the
published model and pushes a precomputed random update of the same size at about the same time
(``ModelLink``, as ``tdxfl.client.worker`` does).

The PS resets its high-water mark (``/proc/self/clear_refs`` 5) after everyone joined and the
model is published, samples VmRSS every 5 ms during the round, and reports ``peak -
rss_before``: the round's transient memory (receive slots, accumulator, mean, TLS and socket
buffers, thread stacks). The service is the shipped one, wrapped (``Counted``) to count model
sends and updates in flight, so the sampler also reports the peak per phase (``pull`` while any
model send is in flight, else ``push``) and, with ``--timeline S``, (t, growth, counters) every
S seconds; ``--tracemalloc`` adds the peak of Python-level allocations.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    bench_fleet,
    log,
    nbytes,
    random_set,
    read_federation,
    reset_hwm,
    rss_kb,
    spawn,
    synthetic_specs,
    wait_joined,
    write_federation,
)


class Counters:
    """Live counts of the PS's transfers, read by the RSS sampler (bench instrumentation)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sends = 0  # model sends in flight
        self.updates = 0  # updates being offered or received

    def add(self, field: str, d: int) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + d)


def count_transfers(service: Any, counters: Counters) -> None:
    """Make the PS's ``ParameterServerService`` count its transfers in flight (before it serves
    any link); the work is the shipped code's."""
    send, receive = service._send_model, service._receive_update

    def counted_send(party: str, link: Any, after_version: int) -> None:
        counters.add("sends", 1)
        try:
            send(party, link, after_version)
        finally:
            counters.add("sends", -1)

    def counted_receive(party: str, link: Any, offered: Any) -> None:
        counters.add("updates", 1)
        try:
            receive(party, link, offered)
        finally:
            counters.add("updates", -1)

    service._send_model, service._receive_update = counted_send, counted_receive


def ps_main(args: argparse.Namespace) -> None:
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.tensors import to_wire
    from tdxfl.wiring.party import party_context

    workdir = Path(args.workdir)
    names = [f"w{i:02d}" for i in range(args.workers)]
    fed_path = write_federation(workdir, names, faults={"max_concurrent_updates": args.slots})
    fed = read_federation(fed_path)
    specs = synthetic_specs(args.params)
    ctx = party_context(fed, "ps", workdir / "ps")
    fleet = bench_fleet(fed, ctx, specs)
    rounds = fleet.state
    counters = Counters()
    count_transfers(fleet.service, counters)
    fleet.start()
    weights = random_set(specs, 7, scale=0.05)
    procs_n = min(args.procs, args.workers)
    groups = [names[i::procs_n] for i in range(procs_n)]
    procs = [
        spawn("p2_memory", "worker", "--fed", str(fed_path), "--names", ",".join(g), "--params", str(args.params))
        for g in groups
    ]
    try:
        wait_joined(rounds, args.workers, procs, 180.0)
        model = to_wire(pb.TENSOR_KIND_MODEL, 0, weights)
        gc.collect()
        time.sleep(0.5)
        if args.tracemalloc:
            import tracemalloc

            tracemalloc.start()
            traced_before = tracemalloc.get_traced_memory()[0]
        before = rss_kb()
        hwm_reset = reset_hwm()
        peak = [before]
        by_phase: dict[str, int] = {}
        timeline: list[tuple[float, int, tuple[int, int]]] = []
        stop = threading.Event()

        def sample() -> None:
            t_start = time.monotonic()
            last = -1.0
            while not stop.is_set():
                rss = rss_kb()
                snap = (counters.sends, counters.updates)
                peak[0] = max(peak[0], rss)
                phase = "pull" if snap[0] else "push"
                by_phase[phase] = max(by_phase.get(phase, 0), rss)
                now = time.monotonic() - t_start
                if now - last >= args.timeline:
                    timeline.append((round(now, 2), (rss - before) // 1024, snap))
                    last = now
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        rounds.publish(0, model)
        step = rounds.collect(args.workers, 300.0, fail_on_timeout=True, grace=0.0)
        rounds.retire(60.0)
        t1 = time.monotonic()
        stop.set()
        sampler.join()
        hwm = rss_kb("VmHWM")
        traced = None
        if args.tracemalloc:
            cur, tpeak = tracemalloc.get_traced_memory()
            traced = {"peak_MiB": (tpeak - traced_before) / 2**20, "end_MiB": (cur - traced_before) / 2**20}
            tracemalloc.stop()
        assert len(step.contributors) == args.workers, step
        rounds.finish()
        for p in procs:
            if p.wait(120) != 0:
                raise RuntimeError(f"worker process exited with {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        fleet.stop(linger=0)
    peak_kb = max(peak[0], hwm) if hwm_reset else peak[0]
    out = {
        "workers": args.workers,
        "procs": procs_n,
        "model_bytes": nbytes(specs),
        "rss_before_kb": before,
        "peak_kb": peak_kb,
        "growth_bytes": (peak_kb - before) * 1024,
        "hwm_reset": hwm_reset,
        "round_s": t1 - t0,
        "growth_MiB_by_phase": {k: (v - before) / 1024 for k, v in by_phase.items()},
        "threads": threading.active_count(),
        "slots": args.slots,
    }
    if traced is not None:
        out["tracemalloc"] = traced
    if args.timeline < 1e9:
        out["timeline"] = timeline  # (s, growth MiB, (model sends in flight, updates in flight))
    log(
        f"P2 {args.workers} workers: peak growth {(peak_kb - before) / 1024:.1f} MiB in {t1 - t0:.2f}s "
        f"(by phase, MiB: {', '.join(f'{k} {v:.0f}' for k, v in out['growth_MiB_by_phase'].items())})"
    )
    print(json.dumps(out))


def worker_main(args: argparse.Namespace) -> None:
    from tdxfl.client.model_link import ModelLink
    from tdxfl.engine.fleet import RunEnd
    from tdxfl.transport.attested import connect
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.wiring.party import party_context

    fed = read_federation(args.fed)
    specs = synthetic_specs(args.params)
    update = random_set(specs, 11, scale=1e-3)  # shared read-only by this process's parties
    errors: list[BaseException] = []
    ready = threading.Barrier(len(args.names.split(",")))

    def party(name: str) -> None:
        try:
            ctx = party_context(fed, name, Path(args.fed).parent / name)
            ch = connect(
                name,
                "worker",
                ctx.attester,
                ctx.peer_verifier(fed.policy_for("ps")),
                fed.ps.name,
                fed.ps.address,
                fed.ps.enroll_address,
            )
            pb_grpc.ParameterServerStub(ch.channel).Join(
                pb.JoinRequest(config_digest=fed.training_digest()), timeout=60
            )
            link = ModelLink(ch.open_link(fed.ps.data_address))
            ready.wait(300)
            header, _ = link.pull(-1)
            reply = link.push(pb.TENSOR_KIND_GRADIENTS, header.version, update, num_samples=32, metrics={})
            if not reply.accepted:
                raise RuntimeError(reply.reason)
            assert isinstance(link.pull(header.version), RunEnd)
            link.close()
            ch.close()
        except BaseException as e:
            errors.append(e)
            ready.abort()  # the others must not wait for this party at the barrier

    threads = [threading.Thread(target=party, args=(n,)) for n in args.names.split(",")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ps")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--params", type=int, default=5_000_000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--workdir", required=True)
    p.add_argument("--slots", type=int, default=2, help="faults.max_concurrent_updates (receive slots)")
    p.add_argument("--tracemalloc", action="store_true", help="also report the peak of traced Python allocations")
    p.add_argument("--timeline", type=float, default=1e18, metavar="S", help="record (t, growth, counters) every S s")
    w = sub.add_parser("worker")
    w.add_argument("--fed", required=True)
    w.add_argument("--names", required=True)
    w.add_argument("--params", type=int, default=5_000_000)
    args = ap.parse_args()
    (ps_main if args.cmd == "ps" else worker_main)(args)


if __name__ == "__main__":
    sys.exit(main())
