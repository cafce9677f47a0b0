"""P2: parameter-server peak memory during one round, against the number of workers.

``python -m bench.p2_memory ps --workers N --params P --workdir DIR``

A fresh PS process per N (VmHWM only grows): the real ``AttestedServer`` +
``ParameterServerService`` + ``RoundState``, N separately enrolled worker parties (simulated
attestation, each its own key, certificate and mutual-TLS channel) spread over at most
``--procs`` lightweight worker processes (threads, no TensorFlow). Every party pulls the
published model and pushes a precomputed random update of the same size at about the same time.

The PS resets its high-water mark (``/proc/self/clear_refs`` 5) after everyone joined and the
model's frames are encoded, samples VmRSS every 5 ms during the round, and reports
``peak - rss_before``: the round's transient memory (receive buffers, staging assemblers,
accumulator, mean, gRPC send/receive buffers).
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


def ps_main(args: argparse.Namespace) -> None:
    from tdxfl.party import party_context
    from tdxfl.server.rounds import RoundState
    from tdxfl.server.service import ParameterServerService
    from tdxfl.transport.attested import AttestedServer, role_table
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.transport.tensors import encode_stream

    if args.server_opt:  # experiment: extra gRPC server channel args (e.g. grpc.http2.bdp_probe=0)
        import tdxfl.transport.attested as att

        extra = [(k, int(v)) for k, _, v in (o.partition("=") for o in args.server_opt)]
        att.GRPC_OPTIONS = att.GRPC_OPTIONS + extra  # read by AttestedServer.__init__
        log(f"P2 experiment: server options {extra}")
    workdir = Path(args.workdir)
    names = [f"w{i:02d}" for i in range(args.workers)]
    fed_path = write_federation(workdir, names)
    fed = read_federation(fed_path)
    specs = synthetic_specs(args.params)
    ctx = party_context(fed, "ps", workdir / "ps")
    rounds = RoundState(specs, "gradients")
    server = AttestedServer(
        "ps", ctx.attester, ctx.peer_verifier(fed, "workers"), fed.ps.address, fed.ps.enroll_address,
        roles=role_table([(w.name, "worker") for w in fed.workers]),
    )
    pb_grpc.add_ParameterServerServicer_to_server(ParameterServerService(fed, server, rounds), server.main)  # type: ignore[arg-type]
    server.start()
    weights = random_set(specs, 7, scale=0.05)
    procs_n = min(args.procs, args.workers)
    groups = [names[i::procs_n] for i in range(procs_n)]
    procs = [spawn("p2_memory", "worker", "--fed", str(fed_path), "--names", ",".join(g), "--params", str(args.params))
             for g in groups]
    try:
        wait_joined(rounds, args.workers, procs, 180.0)
        frames = list(encode_stream("weights", 0, weights))
        gc.collect()
        time.sleep(0.5)
        before = rss_kb()
        hwm_reset = reset_hwm()
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kb())
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
    }
    log(f"P2 {args.workers} workers: peak growth {(peak_kb - before) / 1024:.1f} MiB in {t1 - t0:.2f}s")
    print(json.dumps(out))


def worker_main(args: argparse.Namespace) -> None:
    from tdxfl.party import party_context
    from tdxfl.transport.attested import connect
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.transport.tensors import decode_stream, encode_stream

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
            stub.Join(pb.JoinRequest(party=name, config_digest=fed.training_digest()), timeout=60)
            ready.wait()
            header, _ = decode_stream(stub.Pull(pb.PullRequest(after_version=-1)))
            reply = stub.Push(encode_stream("gradients", header.version, update, num_samples=32))
            if not reply.accepted:
                raise RuntimeError(reply.reason)
            done = list(stub.Pull(pb.PullRequest(after_version=header.version)))
            assert done[0].header.kind == "done"
            ch.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

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
    p.add_argument("--server-opt", action="append", default=[], metavar="KEY=INT",
                   help="experiment: extra gRPC server option for the PS (repeatable)")
    w = sub.add_parser("worker")
    w.add_argument("--fed", required=True)
    w.add_argument("--names", required=True)
    w.add_argument("--params", type=int, default=5_000_000)
    args = ap.parse_args()
    (ps_main if args.cmd == "ps" else worker_main)(args)


if __name__ == "__main__":
    sys.exit(main())
