"""P1 / P1b / P1-fp16: sync-gradients rounds with the real PS stack, PS + 2 worker processes.

``python -m bench.p1_round ps --workdir DIR --schedule secure,insecure,fp16,...``

The PS process hosts the real ``RoundState`` + ``ParameterServerService`` twice on one round
state: behind an ``AttestedServer`` (mutual RA-TLS, simulated attestation) and behind a plain
``grpc.server(...).add_insecure_port`` with a bench-only shim whose ``peer_of`` names the
worker from call metadata (TLS and attestation off; used for P1b only). It spawns two worker
processes that connect (enroll) once, Join, then for every version in the schedule Pull the
published weights, decode them, and Push precomputed random gradients (training excluded) over
the channel the schedule names. Rounds of different modes are interleaved in one run so that
machine noise hits them alike.

Per round the PS times ``serialize_stream`` + ``publish`` + ``collect`` (the weighted mean is
ready): exactly what ``run_parameter_server`` does per step, minus ``strategy.apply``. Both
endpoints register the service with ``add_to_server`` (Pull sends the pre-serialized frames as
they are). Workers push as ``tdxfl.client.worker`` does: ``iter_serialized`` frames through an
identity request serializer (``PUSH_METHOD``), each push preceded by an ``Admit`` call for a
receive slot (granted at once with 2 workers and 2 slots). ``fp16`` rounds differ only in the workers' pushes
(``iter_serialized(wire_dtype="float16")``); the published model is always float32. Workers
report when their pull finished and when their push was acknowledged (CLOCK_MONOTONIC is
system-wide, so the timestamps are comparable across processes); ``admit_s`` (pull done -> slot
granted, the slowest worker) is part of ``upload_s``.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import ssl
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

from bench.common import (
    wait_joined,
    load_specs,
    log,
    median,
    nbytes,
    random_set,
    read_federation,
    spawn,
    write_federation,
)
from bench.tls_baseline import BioTls, _self_signed

MODES = ("tls", "secure", "insecure", "fp16")
WORKERS = ("worker-1", "worker-2")
PARTY_KEY = "x-bench-party"


class InsecureShim:
    """Stands in for ``AttestedServer`` on a plaintext port: the party comes from call metadata.

    Bench-only, for measuring what TLS + attestation cost; never a way to run a federation.
    """

    def peer_of(self, context: Any) -> Any:
        from tdxfl.transport.attested import EnrolledPeer

        md = dict(context.invocation_metadata())
        return EnrolledPeer(md.get(PARTY_KEY, "?"), "worker", b"")


def ps_main(args: argparse.Namespace) -> None:
    import grpc

    from tdxfl.party import party_context
    from tdxfl.server.rounds import RoundState
    from tdxfl.server.service import ParameterServerService, add_to_server
    from tdxfl.transport.attested import GRPC_OPTIONS, AttestedServer, role_table
    from tdxfl.transport.tensors import serialize_stream

    if args.server_opt:  # experiment: extra gRPC server options on both PS endpoints
        import tdxfl.transport.attested as att

        extra = [(k, int(v)) for k, _, v in (o.partition("=") for o in args.server_opt)]
        att.GRPC_OPTIONS = GRPC_OPTIONS = att.GRPC_OPTIONS + extra  # read by AttestedServer.__init__
        log(f"P1 experiment: server options {extra}")
    workdir = Path(args.workdir)
    fed_path = write_federation(workdir, list(WORKERS))
    fed = read_federation(fed_path)
    specs, _ = load_specs()
    ctx = party_context(fed, "ps", workdir / "ps")
    rounds = RoundState(specs, "gradients")
    server = AttestedServer(
        "ps", ctx.attester, ctx.peer_verifier(fed, "workers"), fed.ps.address, fed.ps.enroll_address,
        roles=role_table([(w.name, "worker") for w in fed.workers]),
    )
    add_to_server(ParameterServerService(fed, server, rounds), server.main)
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=GRPC_OPTIONS, maximum_concurrent_rpcs=128)
    add_to_server(ParameterServerService(fed, InsecureShim(), rounds), plain)  # type: ignore[arg-type]
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    server.start()
    plain.start()
    # the raw-TLS baseline lives in the same processes, so its rounds interleave with the others
    cert, key = _self_signed(str(workdir))
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tls_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    weights = random_set(specs, 1234, scale=0.05)
    model_bytes = nbytes(specs)
    payload = memoryview(b"".join(a.tobytes() for a in weights.arrays))
    schedule = args.schedule.split(",")
    procs = [
        spawn("p1_round", "worker", "--fed", str(fed_path), "--name", w, "--plain", f"127.0.0.1:{plain_port}",
              "--tls", f"{listener.getsockname()[1]}:{cert}", "--schedule", args.schedule, "--out", str(workdir / f"{w}.json"))
        for w in WORKERS
    ]
    try:
        conns = []
        for _ in WORKERS:
            raw, _ = listener.accept()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(BioTls(raw, tls_ctx, server_side=True))
        bufs = [memoryview(bytearray(model_bytes)) for _ in conns]
        wait_joined(rounds, len(WORKERS), procs, 120.0)
        records = []
        for v, mode in enumerate(schedule):
            gc.collect()
            time.sleep(0.2)  # let the workers settle into their Pull
            if mode == "tls":
                t0 = time.monotonic()
                threads = [threading.Thread(target=_tls_exchange, args=(c, payload, b)) for c, b in zip(conns, bufs)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                t2 = time.monotonic()
                records.append({"version": v, "mode": mode, "t_start": t0, "encode_s": 0.0, "round_s": t2 - t0, "t_end": t2})
                log(f"P1 round {v} (raw tls baseline): {t2 - t0:.3f}s")
                continue
            t0 = time.monotonic()
            frames = serialize_stream("weights", v, weights, chunk_bytes=args.chunk_bytes)
            t1 = time.monotonic()
            rounds.publish(v, frames)
            step = rounds.collect(len(WORKERS), 90.0, fail_on_timeout=True, grace=0.0)
            t2 = time.monotonic()
            assert sorted(step.contributors) == sorted(WORKERS), step
            del frames, step
            records.append({"version": v, "mode": mode, "t_start": t0, "encode_s": t1 - t0, "round_s": t2 - t0, "t_end": t2})
            log(f"P1 round {v} ({mode}): {t2 - t0:.3f}s (encode {t1 - t0:.3f}s)")
        rounds.finish()
        for c in conns:
            c.sock.close()
        for p in procs:
            if p.wait(60) != 0:
                raise RuntimeError(f"worker exited with {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        time.sleep(0.3)
        server.stop(None)
        plain.stop(None)
    wrec = {w: {r["version"]: r for r in json.loads((workdir / f"{w}.json").read_text())} for w in WORKERS}
    for r in records:
        if r["mode"] == "tls":
            continue
        ws = [wrec[w][r["version"]] for w in WORKERS]
        r["download_s"] = max(x["pull_done"] for x in ws) - r["t_start"] - r["encode_s"]
        r["decode_s"] = max(x["pull_done"] - x["pull_first"] for x in ws)
        r["admit_s"] = max(x["admitted"] - x["pull_done"] for x in ws)
        r["upload_s"] = max(x["push_done"] for x in ws) - max(x["pull_done"] for x in ws)
        r["tail_s"] = r["t_end"] - max(x["push_done"] for x in ws)
    print(json.dumps({"model_bytes": model_bytes, "tls_cipher": conns[0].cipher(), "rounds": records}))


def _tls_exchange(conn: BioTls, payload: memoryview, buf: memoryview) -> None:
    conn.sendall(payload)
    conn.recv_exact(buf)


def worker_main(args: argparse.Namespace) -> None:
    import grpc

    from tdxfl.party import party_context
    from tdxfl.transport.attested import GRPC_OPTIONS, connect
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.client.worker import PUSH_METHOD
    from tdxfl.transport.tensors import Assembler, as_is, decode_header, iter_serialized

    fed = read_federation(args.fed)
    ctx = party_context(fed, args.name, Path(args.out).parent / args.name)
    specs, _ = load_specs()
    index = [w.name for w in fed.workers].index(args.name)
    grads = random_set(specs, 100 + index, scale=1e-3)
    ch = connect(args.name, "worker", ctx.attester, ctx.peer_verifier(fed, "ps"), fed.ps.name, fed.ps.address, fed.ps.enroll_address)
    plain_ch = grpc.insecure_channel(args.plain, options=GRPC_OPTIONS)
    secure = pb_grpc.ParameterServerStub(ch.channel)
    plain = pb_grpc.ParameterServerStub(plain_ch)
    pushes = {stub: c.stream_unary(PUSH_METHOD, request_serializer=as_is, response_deserializer=pb.PushReply.FromString)
              for stub, c in ((secure, ch.channel), (plain, plain_ch))}
    md = ((PARTY_KEY, args.name),)
    tls_port, tls_cert = args.tls.split(":", 1)
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tls_ctx.load_verify_locations(tls_cert)
    tls_ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", int(tls_port)))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = BioTls(raw, tls_ctx, server_side=False)
    tls_buf = memoryview(bytearray(grads.nbytes))
    tls_payload = memoryview(b"".join(a.tobytes() for a in grads.arrays))
    secure.Join(pb.JoinRequest(party=args.name, config_digest=fed.training_digest()), timeout=30)
    records = []
    for v, mode in enumerate(args.schedule.split(",")):
        if mode == "tls":
            tls.recv_exact(tls_buf)
            tls.sendall(tls_payload)
            continue
        stub = plain if mode == "insecure" else secure
        it = iter(stub.Pull(pb.PullRequest(after_version=v - 1), metadata=md))
        header = decode_header(next(it))  # arrives once the PS publishes
        t_first = time.monotonic()
        asm = Assembler(header.specs)  # what decode_stream does, with a timestamp after the header
        for frame in it:
            asm.feed(frame.chunk)
        asm.finish()
        t_pulled = time.monotonic()
        wire = "float16" if mode == "fp16" else None
        admitted = stub.Admit(pb.AdmitRequest(version=v), metadata=md)  # as tdxfl.client.worker, before each push
        if not admitted.granted:
            raise RuntimeError(f"not admitted: {admitted.reason}")
        t_admitted = time.monotonic()
        reply = pushes[stub](
            iter_serialized("gradients", v, grads, num_samples=32, metrics={"loss": 1.0}, wire_dtype=wire), metadata=md
        )
        t_pushed = time.monotonic()
        if not reply.accepted:
            raise RuntimeError(f"update refused: {reply.reason}")
        records.append({"version": v, "mode": mode, "pull_first": t_first, "pull_done": t_pulled, "admitted": t_admitted,
                        "push_done": t_pushed})
        del asm
    done = list(secure.Pull(pb.PullRequest(after_version=len(args.schedule.split(",")) - 1), metadata=md))
    assert done[0].header.kind == "done", done
    Path(args.out).write_text(json.dumps(records))
    ch.close()


def summarize(data: dict[str, Any], warmup: int) -> dict[str, dict[str, float]]:
    """Median per mode of each timed phase, skipping the first ``warmup`` rounds."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rs = [r for r in data["rounds"] if r["mode"] == mode and r["version"] >= warmup]
        if rs:
            keys = ("round_s", "encode_s", "download_s", "decode_s", "admit_s", "upload_s", "tail_s")
            out[mode] = {k: median([r[k] for r in rs]) for k in keys if k in rs[0]}
            out[mode]["n"] = len(rs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ps")
    p.add_argument("--workdir", required=True)
    p.add_argument("--schedule", required=True)
    p.add_argument("--server-opt", action="append", default=[], metavar="KEY=INT",
                   help="experiment: extra gRPC server option for the PS endpoints (repeatable)")
    p.add_argument("--chunk-bytes", type=int, default=1 << 20, help="experiment: serialize_stream chunk size")
    w = sub.add_parser("worker")
    w.add_argument("--fed", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--plain", required=True)
    w.add_argument("--tls", required=True)
    w.add_argument("--schedule", required=True)
    w.add_argument("--out", required=True)
    args = ap.parse_args()
    (ps_main if args.cmd == "ps" else worker_main)(args)


if __name__ == "__main__":
    sys.exit(main())
