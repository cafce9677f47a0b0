"""P2: parameter-server peak memory during one round, against the number of workers.

``python -m bench.p2_memory ps --workers N --params P --workdir DIR``

A fresh PS process per N (VmHWM only grows): the real ``AttestedServer`` +
``ParameterServerService`` + ``RoundState``, N separately enrolled worker parties (simulated
attestation, each its own key, certificate and mutual-TLS channel) spread over at most
``--procs`` lightweight worker processes (threads, no TensorFlow). Every party pulls the
published model, asks for a receive slot (``Admit``, as ``tdxfl.client.worker`` does) and
pushes a precomputed random update of the same size at about the same time.

The PS resets its high-water mark (``/proc/self/clear_refs`` 5) after everyone joined and the
model's frames are encoded, samples VmRSS every 5 ms during the round, and reports
``peak - rss_before``: the round's transient memory (receive buffers, staging assemblers,
accumulator, mean, gRPC send/receive buffers). The service is the shipped one, wrapped
(``instrumented_service``) to count live Pull / Admit / Push streams, so the sampler also reports
the peak per phase (``pull`` while any Pull is still sending, else ``push``) and, with
``--timeline S``, (t, growth, counters) every S seconds; ``--tracemalloc`` adds the peak of
Python-level allocations (everything else is native: gRPC core, OpenSSL, malloc retention).

Experiments (see bench/README.md, P2): ``--no-admit`` (workers push without calling ``Admit``,
like a client from before acefaa7: each Push stream then waits in the server for a slot),
``--server-opt`` / ``--client-opt KEY=INT`` (gRPC options), ``--slots``
(``faults.max_concurrent_updates``), ``--chunk-bytes`` (publish chunk size), ``--pull-slots``
(cap on concurrently sending Pulls), ``--trim`` (``malloc_trim(0)`` after every push).
Environment variables such as ``MALLOC_ARENA_MAX`` pass through.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import time
from pathlib import Path

from bench.common import wait_joined, log, nbytes, random_set, read_federation, reset_hwm, rss_kb, spawn, synthetic_specs, write_federation


class Phases:
    """Live counters of the PS's streams, read by the RSS sampler (bench instrumentation)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pulls = 0          # Pull streams still sending the model
        self.pushes_open = 0    # Push handlers running (header read, waiting for a slot or receiving)
        self.pushes_in_slot = 0  # Push handlers holding a StagingPool slot
        self.admit_waiting = 0  # Admit calls in progress (waiting for a receive slot)

    def add(self, field: str, d: int) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + d)

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.pulls, self.pushes_open, self.pushes_in_slot, self.admit_waiting


def instrumented_service(base: type, phases: Phases, *, pull_slots: int = 0, trim: bool = False) -> type:
    """``base`` (ParameterServerService) with live stream counters (bench instrumentation only:
    ``Admit`` and ``Push`` are the shipped ones). ``pull_slots`` > 0 lets at most that many Pull
    streams send the model at once, ``trim`` calls ``malloc_trim(0)`` after every push
    (experiments)."""
    pull_sem = threading.BoundedSemaphore(pull_slots) if pull_slots else None
    malloc_trim = None
    if trim:  # experiment: give freed heap memory back to the OS after every push (glibc)
        import ctypes

        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    import contextlib

    class Service(base):  # type: ignore[misc,valid-type]
        def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
            super().__init__(*a, **kw)
            pool = self._staging
            orig = pool.assembler

            @contextlib.contextmanager
            def counted(party, specs, context):  # type: ignore[no-untyped-def]
                with orig(party, specs, context) as asm:
                    phases.add("pushes_in_slot", 1)
                    try:
                        yield asm
                    finally:
                        phases.add("pushes_in_slot", -1)

            pool.assembler = counted  # type: ignore[method-assign]

        def Pull(self, request, context):  # type: ignore[no-untyped-def]
            started = False
            try:
                for frame in super().Pull(request, context):
                    if not started:
                        if pull_sem is not None:
                            pull_sem.acquire()
                        started = True
                        phases.add("pulls", 1)
                    yield frame
            finally:
                if started:
                    phases.add("pulls", -1)
                    if pull_sem is not None:
                        pull_sem.release()

        def Admit(self, request, context):  # type: ignore[no-untyped-def]
            phases.add("admit_waiting", 1)
            try:
                return super().Admit(request, context)
            finally:
                phases.add("admit_waiting", -1)

        def Push(self, request_iterator, context):  # type: ignore[no-untyped-def]
            phases.add("pushes_open", 1)
            try:
                return super().Push(request_iterator, context)
            finally:
                phases.add("pushes_open", -1)
                if malloc_trim is not None:
                    malloc_trim(0)

    return Service


def ps_main(args: argparse.Namespace) -> None:
    from tdxfl.party import party_context
    from tdxfl.server.rounds import RoundState
    from tdxfl.server.service import ParameterServerService, add_to_server
    from tdxfl.transport.attested import AttestedServer, role_table
    from tdxfl.transport.tensors import serialize_stream

    if args.server_opt:  # experiment: extra gRPC server channel args (e.g. grpc.http2.bdp_probe=0)
        import tdxfl.transport.attested as att

        extra = [(k, int(v)) for k, _, v in (o.partition("=") for o in args.server_opt)]
        att.GRPC_OPTIONS = att.GRPC_OPTIONS + extra  # read by AttestedServer.__init__
        log(f"P2 experiment: server options {extra}")
    workdir = Path(args.workdir)
    names = [f"w{i:02d}" for i in range(args.workers)]
    fed_path = write_federation(workdir, names, faults={"max_concurrent_updates": args.slots})
    fed = read_federation(fed_path)
    specs = synthetic_specs(args.params)
    ctx = party_context(fed, "ps", workdir / "ps")
    rounds = RoundState(specs, "gradients")
    server = AttestedServer(
        "ps", ctx.attester, ctx.peer_verifier(fed, "workers"), fed.ps.address, fed.ps.enroll_address,
        roles=role_table([(w.name, "worker") for w in fed.workers]),
    )
    phases = Phases()
    Service = instrumented_service(ParameterServerService, phases, pull_slots=args.pull_slots, trim=args.trim)
    add_to_server(Service(fed, server, rounds), server.main)
    server.start()
    weights = random_set(specs, 7, scale=0.05)
    procs_n = min(args.procs, args.workers)
    groups = [names[i::procs_n] for i in range(procs_n)]
    wargs = ["--params", str(args.params), *(["--no-admit"] if args.no_admit else []),
             *(a for o in args.client_opt for a in ("--client-opt", o))]
    procs = [spawn("p2_memory", "worker", "--fed", str(fed_path), "--names", ",".join(g), *wargs) for g in groups]
    try:
        wait_joined(rounds, args.workers, procs, 180.0)
        frames = serialize_stream("weights", 0, weights, chunk_bytes=args.chunk_bytes)
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
        timeline: list[tuple[float, int, tuple[int, int, int, int]]] = []
        stop = threading.Event()

        def sample() -> None:
            t_start = time.monotonic()
            last = -1.0
            while not stop.is_set():
                rss = rss_kb()
                snap = phases.snapshot()
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
        rounds.publish(0, frames)
        step = rounds.collect(args.workers, 300.0, fail_on_timeout=True, grace=0.0)
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
        server.stop(None)
    peak_kb = max(peak[0], hwm) if hwm_reset else peak[0]
    out = {
        "workers": args.workers, "procs": procs_n, "model_bytes": nbytes(specs), "rss_before_kb": before,
        "peak_kb": peak_kb, "growth_bytes": (peak_kb - before) * 1024, "hwm_reset": hwm_reset, "round_s": t1 - t0,
        "growth_MiB_by_phase": {k: (v - before) / 1024 for k, v in by_phase.items()},
        "threads": threading.active_count(), "admit": not args.no_admit, "slots": args.slots,
        "server_opts": args.server_opt, "client_opts": args.client_opt, "chunk_bytes": args.chunk_bytes,
    }
    if traced is not None:
        out["tracemalloc"] = traced
    if args.timeline < 1e9:
        out["timeline"] = timeline  # (s, growth MiB, (pulls, pushes_open, pushes_in_slot, admit_waiting))
    log(f"P2 {args.workers} workers: peak growth {(peak_kb - before) / 1024:.1f} MiB in {t1 - t0:.2f}s "
        f"(by phase, MiB: {', '.join(f'{k} {v:.0f}' for k, v in out['growth_MiB_by_phase'].items())})")
    print(json.dumps(out))


def worker_main(args: argparse.Namespace) -> None:
    import grpc

    import tdxfl.transport.attested as att
    from tdxfl.party import party_context
    from tdxfl.transport.attested import connect
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.client.worker import PUSH_METHOD
    from tdxfl.transport.tensors import as_is, decode_stream, iter_serialized

    if args.client_opt:  # experiment: extra channel args for the workers' mutual-TLS channels
        att.GRPC_OPTIONS = att.GRPC_OPTIONS + [(k, int(v)) for k, _, v in (o.partition("=") for o in args.client_opt)]
    fed = read_federation(args.fed)
    specs = synthetic_specs(args.params)
    update = random_set(specs, 11, scale=1e-3)  # shared read-only by this process's parties
    errors: list[BaseException] = []
    ready = threading.Barrier(len(args.names.split(",")))

    def party(name: str) -> None:
        try:
            ctx = party_context(fed, name, Path(args.fed).parent / name)
            ch = connect(name, "worker", ctx.attester, ctx.peer_verifier(fed, "ps"), fed.ps.name, fed.ps.address, fed.ps.enroll_address)
            stub = pb_grpc.ParameterServerStub(ch.channel)
            push = ch.channel.stream_unary(PUSH_METHOD, request_serializer=as_is, response_deserializer=pb.PushReply.FromString)
            stub.Join(pb.JoinRequest(party=name, config_digest=fed.training_digest()), timeout=60)
            ready.wait(300)
            header, _ = decode_stream(stub.Pull(pb.PullRequest(after_version=-1)))
            if not args.no_admit:  # as tdxfl.client.worker: ask for a receive slot, then push
                admitted = stub.Admit(pb.AdmitRequest(version=header.version))
                if not admitted.granted:
                    raise RuntimeError(f"{name}: not admitted: {admitted.reason}")
            reply = push(iter_serialized("gradients", header.version, update, num_samples=32))
            if not reply.accepted:
                raise RuntimeError(reply.reason)
            done = list(stub.Pull(pb.PullRequest(after_version=header.version)))
            assert done[0].header.kind == "done"
            ch.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            ready.abort()  # the others must not wait for this party at the barrier

    threads = [threading.Thread(target=party, args=(n,)) for n in args.names.split(",")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    del grpc


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ps")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--params", type=int, default=5_000_000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--workdir", required=True)
    p.add_argument("--server-opt", action="append", default=[], metavar="KEY=INT",
                   help="experiment: extra gRPC server option for the PS (repeatable)")
    p.add_argument("--client-opt", action="append", default=[], metavar="KEY=INT",
                   help="experiment: extra gRPC channel option for the workers (repeatable)")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20, help="serialize_stream chunk size of the published model")
    p.add_argument("--slots", type=int, default=2, help="faults.max_concurrent_updates (StagingPool slots)")
    p.add_argument("--no-admit", action="store_true",
                   help="variant: workers push without calling Admit (as before acefaa7); the Push waits for a slot")
    p.add_argument("--trim", action="store_true", help="experiment: malloc_trim(0) after every push")
    p.add_argument("--pull-slots", type=int, default=0, help="experiment: at most this many Pull streams send at once")
    p.add_argument("--tracemalloc", action="store_true", help="also report the peak of traced Python allocations")
    p.add_argument("--timeline", type=float, default=1e18, metavar="S", help="record (t, growth, counters) every S s")
    w = sub.add_parser("worker")
    w.add_argument("--fed", required=True)
    w.add_argument("--names", required=True)
    w.add_argument("--params", type=int, default=5_000_000)
    w.add_argument("--no-admit", action="store_true")
    w.add_argument("--client-opt", action="append", default=[])
    args = ap.parse_args()
    (ps_main if args.cmd == "ps" else worker_main)(args)


if __name__ == "__main__":
    sys.exit(main())
