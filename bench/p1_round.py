"""P1 / P1b / P1-fp16: sync-gradients rounds with the real PS stack, PS + 2 worker processes.

``python -m bench.p1_round ps --workdir DIR --schedule tls,tcp,secure,insecure,fp16,...``

The PS process hosts the real ``RoundState`` + ``ParameterServerService`` behind the shipped
endpoints: ``AttestedServer`` (enrollment, ``Join``) and a ``LinkServer`` (tensor links, mutual
TLS 1.3, simulated attestation) — and, for P1b only, the same service's ``serve_link`` on
plaintext links (``bench.common.serve_plain_links``: TLS and attestation off). It spawns two
worker processes that enroll once, Join, open both links, then for every round in the schedule
``ModelLink.pull`` the published weights and ``ModelLink.push`` precomputed random gradients
(training excluded), as ``tdxfl.client.worker`` does. ``fp16`` / ``bf16`` rounds differ only in
the pushes (``wire_dtype="float16"`` / ``"bfloat16"``). Rounds of all modes are interleaved in one run so that machine noise
hits them alike.

Baselines in the same processes: ``tls`` — raw TLS 1.3 (Python ``ssl``, memory BIOs, 1 MiB
socket I/O: ``bench.tls_baseline.BioTls``) moving the same bytes in the same pattern (server ->
each client concurrently, then each client -> server); ``tcp`` — the same over plaintext
sockets: the floor of any transport here, and with ``tls`` the cost of the crypto itself.

Per round the PS times ``to_wire`` + ``publish`` + ``collect`` (the weighted mean is ready) +
``retire``: what ``run_parameter_server`` does per step, minus ``strategy.apply``. Workers report
when their pull finished and when their push was acknowledged (CLOCK_MONOTONIC is system-wide).
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
from pathlib import Path
from typing import Any

from bench.common import (
    bench_fleet,
    load_specs,
    log,
    median,
    nbytes,
    plain_link,
    random_set,
    read_federation,
    serve_plain_links,
    spawn,
    wait_joined,
    write_federation,
)
from bench.tls_baseline import BioTls, _self_signed

MODES = ("tls", "tcp", "secure", "insecure", "fp16", "bf16")
WORKERS = ("worker-1", "worker-2")


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], min(len(view) - got, 4 << 20))
        if not n:
            raise ConnectionError("peer closed early")
        got += n


def ps_main(args: argparse.Namespace) -> None:
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.tensors import to_wire
    from tdxfl.wiring.party import party_context

    workdir = Path(args.workdir)
    fed_path = write_federation(workdir, list(WORKERS))
    fed = read_federation(fed_path)
    specs, _ = load_specs()
    ctx = party_context(fed, "ps", workdir / "ps")
    fleet = bench_fleet(fed, ctx, specs)
    rounds = fleet.state
    plain_listener = socket.create_server(("127.0.0.1", 0))
    serve_plain_links(plain_listener, fleet.service.serve_link)
    fleet.start()
    # the raw baselines live in the same processes, so their rounds interleave with the others
    cert, key = _self_signed(str(workdir))
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tls_ctx.load_cert_chain(cert, key)
    tls_listener, tcp_listener = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    weights = random_set(specs, 1234, scale=0.05)
    model_bytes = nbytes(specs)
    payload = memoryview(b"".join(a.tobytes() for a in weights.arrays))
    schedule = args.schedule.split(",")
    procs = [
        spawn(
            "p1_round",
            "worker",
            "--fed",
            str(fed_path),
            "--name",
            w,
            "--plain",
            str(plain_listener.getsockname()[1]),
            "--tls",
            f"{tls_listener.getsockname()[1]}:{cert}",
            "--tcp",
            str(tcp_listener.getsockname()[1]),
            "--schedule",
            args.schedule,
            "--out",
            str(workdir / f"{w}.json"),
        )
        for w in WORKERS
    ]
    try:
        tls_conns, tcp_conns = [], []
        for _ in WORKERS:
            raw, _ = tls_listener.accept()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls_conns.append(BioTls(raw, tls_ctx, server_side=True))
            tcp, _ = tcp_listener.accept()
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tcp_conns.append(tcp)
        bufs = [memoryview(bytearray(model_bytes)) for _ in WORKERS]

        def tls_exchange(i: int) -> None:
            tls_conns[i].sendall(payload)
            tls_conns[i].recv_exact(bufs[i])

        def tcp_exchange(i: int) -> None:
            tcp_conns[i].sendall(payload)
            _recv_exact(tcp_conns[i], bufs[i])

        wait_joined(rounds, len(WORKERS), procs, 120.0)
        records = []
        for v, mode in enumerate(schedule):
            gc.collect()
            time.sleep(0.2)  # let the workers settle into their pull
            if mode in ("tls", "tcp"):
                t0 = time.monotonic()
                threads = [
                    threading.Thread(target=tls_exchange if mode == "tls" else tcp_exchange, args=(i,))
                    for i in range(len(WORKERS))
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                t2 = time.monotonic()
                records.append(
                    {"version": v, "mode": mode, "t_start": t0, "encode_s": 0.0, "round_s": t2 - t0, "t_end": t2}
                )
                log(f"P1 round {v} (raw {mode} baseline): {t2 - t0:.3f}s")
                continue
            t0 = time.monotonic()
            model = to_wire(pb.TENSOR_KIND_MODEL, v, weights)
            t1 = time.monotonic()
            rounds.publish(v, model)
            step = rounds.collect(len(WORKERS), 90.0, fail_on_timeout=True, grace=0.0)
            rounds.retire(90.0)  # as run_parameter_server, before it changes the weights
            t2 = time.monotonic()
            assert sorted(step.contributors) == sorted(WORKERS), step
            del model, step
            records.append(
                {"version": v, "mode": mode, "t_start": t0, "encode_s": t1 - t0, "round_s": t2 - t0, "t_end": t2}
            )
            log(f"P1 round {v} ({mode}): {t2 - t0:.3f}s (snapshot {t1 - t0:.3f}s)")
        rounds.finish()
        for p in procs:
            if p.wait(60) != 0:
                raise RuntimeError(f"worker exited with {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        fleet.stop(linger=0)
    wrec = {w: {r["version"]: r for r in json.loads((workdir / f"{w}.json").read_text())} for w in WORKERS}
    for r in records:
        if r["mode"] in ("tls", "tcp"):
            continue
        ws = [wrec[w][r["version"]] for w in WORKERS]
        r["download_s"] = max(x["pull_done"] for x in ws) - r["t_start"] - r["encode_s"]
        r["upload_s"] = max(x["push_done"] for x in ws) - max(x["pull_done"] for x in ws)
        r["tail_s"] = r["t_end"] - max(x["push_done"] for x in ws)
    print(json.dumps({"model_bytes": model_bytes, "tls_cipher": tls_conns[0].cipher(), "rounds": records}))


def worker_main(args: argparse.Namespace) -> None:
    from tdxfl.client.model_link import ModelLink
    from tdxfl.engine.fleet import RunEnd
    from tdxfl.transport.attested import connect
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.wiring.party import party_context

    fed = read_federation(args.fed)
    ctx = party_context(fed, args.name, Path(args.out).parent / args.name)
    specs, _ = load_specs()
    index = [w.name for w in fed.workers].index(args.name)
    grads = random_set(specs, 100 + index, scale=1e-3)
    ch = connect(
        args.name,
        "worker",
        ctx.attester,
        ctx.peer_verifier(fed.policy_for("ps")),
        fed.ps.name,
        fed.ps.address,
        fed.ps.enroll_address,
    )
    pb_grpc.ParameterServerStub(ch.channel).Join(pb.JoinRequest(config_digest=fed.training_digest()), timeout=30)
    secure = ModelLink(ch.open_link(fed.ps.data_address))
    plain = ModelLink(plain_link(("127.0.0.1", int(args.plain)), args.name))
    tls_port, tls_cert = args.tls.split(":", 1)
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    tls_ctx.load_verify_locations(tls_cert)
    tls_ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", int(tls_port)))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = BioTls(raw, tls_ctx, server_side=False)
    tcp = socket.create_connection(("127.0.0.1", int(args.tcp)))
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw_buf = memoryview(bytearray(grads.nbytes))
    raw_payload = memoryview(b"".join(a.tobytes() for a in grads.arrays))
    records = []
    schedule = args.schedule.split(",")
    for v, mode in enumerate(schedule):
        if mode == "tls":
            tls.recv_exact(raw_buf)
            tls.sendall(raw_payload)
            continue
        if mode == "tcp":
            _recv_exact(tcp, raw_buf)
            tcp.sendall(raw_payload)
            continue
        link = plain if mode == "insecure" else secure
        header, _ = link.pull(v - 1)
        assert header.version == v, header
        t_pulled = time.monotonic()
        wire = {"fp16": "float16", "bf16": "bfloat16"}.get(mode)
        reply = link.push(pb.TENSOR_KIND_GRADIENTS, v, grads, num_samples=32, metrics={"loss": 1.0}, wire_dtype=wire)
        t_pushed = time.monotonic()
        if not reply.accepted:
            raise RuntimeError(f"update refused: {reply.reason}")
        records.append({"version": v, "mode": mode, "pull_done": t_pulled, "push_done": t_pushed})
    assert isinstance(secure.pull(len(schedule) - 1), RunEnd)
    Path(args.out).write_text(json.dumps(records))
    for c in (secure, plain):
        c.close()
    ch.close()


def summarize(data: dict[str, Any], warmup: int) -> dict[str, dict[str, float]]:
    """Median per mode of each timed phase, skipping the first ``warmup`` rounds."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        rs = [r for r in data["rounds"] if r["mode"] == mode and r["version"] >= warmup]
        if rs:
            keys = ("round_s", "encode_s", "download_s", "upload_s", "tail_s")
            out[mode] = {k: median([r[k] for r in rs]) for k in keys if k in rs[0]}
            out[mode]["n"] = len(rs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ps")
    p.add_argument("--workdir", required=True)
    p.add_argument("--schedule", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--fed", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--plain", required=True)
    w.add_argument("--tls", required=True)
    w.add_argument("--tcp", required=True)
    w.add_argument("--schedule", required=True)
    w.add_argument("--out", required=True)
    args = ap.parse_args()
    (ps_main if args.cmd == "ps" else worker_main)(args)


if __name__ == "__main__":
    sys.exit(main())
