"""P3: mutual RA-TLS connection set-up vs a plain TLS gRPC connection; P3-tdx: DCAP verify time.

``python -m bench.p3_connect serve --workdir DIR`` runs a PS endpoint (AttestedServer with
simulated attestation, the real ParameterServerService) until stdin closes;
``python -m bench.p3_connect client --fed F --reps R`` (another process) measures, interleaved:

* ``ratls``: what a worker does before its first tensor moves: ``connect()`` (fetch the server
  certificate, Attest — which also returns the server's enrollment challenge —, appraise,
  create our RA-TLS identity, Enroll) + the first RPC (Join) on the new mutual-TLS channel +
  ``open_link`` (the tensor link's mutual TLS 1.3 handshake) + one request on the link that the
  server answers at once (an update offer it refuses: a header naming no tensors);
* ``tls`` (the baseline): a plain server-authenticated TLS gRPC channel to the same server's TLS
  port (the enrollment port: same certificate, no client certificate) + a first RPC that does
  no work: ``/tdxfl.bench.Probe/Ping``, a bench-only no-op handler that ``serve`` registers on the
  enrollment server (same server, thread pool and TLS credentials as Attest/Enroll). It stands
  in for the removed ``Challenge`` RPC (whose handler only drew a nonce);
* ``tls_enroll``: the same channel with ``Enroll(EnrollRequest())`` as its first RPC (refused at
  once: unknown party; records a refusal in the PS's decision log) — the closest shipped RPC,
  reported for comparison;
* ``mtls``: mutual TLS to the main port with an already enrolled identity + Join (the
  handshake cost without any attestation work, for the breakdown).

Every channel gets ``grpc.use_local_subchannel_pool`` so no connection is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import bench_fleet, median, read_federation, write_federation

LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]
SAMPLE_TIME = 1752919234  # tests/attestation/conftest.py: the sample collateral is valid then


PROBE_SERVICE = "tdxfl.bench.Probe"


def _as_is(b: bytes) -> bytes:
    return b


def serve_main(args: argparse.Namespace) -> None:
    import grpc

    from tdxfl.engine.records import TensorSpec
    from tdxfl.wiring.party import party_context

    workdir = Path(args.workdir)
    fed_path = write_federation(workdir, ["worker-1", "worker-2"])
    fed = read_federation(fed_path)
    ctx = party_context(fed, "ps", workdir / "ps")
    fleet = bench_fleet(fed, ctx, [TensorSpec("w", "float32", (4,))])
    server = fleet.server
    # P3's baseline RPC: a no-op on the enrollment port (Challenge, the old baseline, is gone)
    server.enrollment.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                PROBE_SERVICE,
                {"Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: b"", _as_is, _as_is)},
            ),
        )
    )
    fleet.start()
    print(json.dumps({"fed": str(fed_path)}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    fleet.stop(linger=0)


def client_main(args: argparse.Namespace) -> None:
    import grpc

    import tdxfl.transport.attested as att
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
    from tdxfl.wiring.party import party_context

    fed = read_federation(args.fed)
    ctx = party_context(fed, "worker-1", Path(args.fed).parent / "worker-1")
    verifier = ctx.peer_verifier(fed.policy_for("ps"))
    ps = fed.ps
    override = [("grpc.ssl_target_name_override", att.tls_name(ps.name))]
    join = pb.JoinRequest(config_digest=fed.training_digest())

    # breakdown of connect(): wrap its steps (module-level names it looks up at call time)
    parts: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    att.fetch_server_certificate = timed("fetch_cert", att.fetch_server_certificate)
    att.TlsIdentity = type(
        "TimedTlsIdentity",
        (att.TlsIdentity,),
        {
            "create": classmethod(
                lambda cls, *a, **kw: timed("identity_create", att.TlsIdentity.__mro__[1].create)(*a, **kw)
            )
        },
    )
    verifier.appraise = timed("appraise_server", verifier.appraise)  # type: ignore[method-assign]

    def ratls() -> float:
        t = time.perf_counter()
        ch = att.connect("worker-1", "worker", ctx.attester, verifier, ps.name, ps.address, ps.enroll_address)
        t_conn = time.perf_counter()
        pb_grpc.ParameterServerStub(ch.channel).Join(join, timeout=30)
        t_join = time.perf_counter()
        link = ch.open_link(ps.data_address)
        link.send(pb.LinkRequest(push=pb.TensorHeader(kind=pb.TENSOR_KIND_GRADIENTS)))
        assert not link.recv(pb.PushGrant).granted
        dt = time.perf_counter() - t
        parts["mtls_join"] = parts.get("mtls_join", 0.0) + t_join - t_conn
        parts["link_first_reply"] = parts.get("link_first_reply", 0.0) + time.perf_counter() - t_join
        link.close()
        ch.close()
        return dt

    server_cert = att.fetch_server_certificate(ps.enroll_address)

    def plain_tls(first_rpc: str) -> float:
        t = time.perf_counter()
        ch = grpc.secure_channel(
            ps.enroll_address,
            grpc.ssl_channel_credentials(root_certificates=server_cert),
            options=override + LOCAL_POOL,
        )
        if first_rpc == "ping":
            ch.unary_unary(f"/{PROBE_SERVICE}/Ping", request_serializer=_as_is, response_deserializer=_as_is)(
                b"", timeout=30
            )
        else:
            reply = pb_grpc.EnrollmentStub(ch).Enroll(pb.EnrollRequest(), timeout=30)
            assert not reply.accepted
        dt = time.perf_counter() - t
        ch.close()
        return dt

    # a second party stays enrolled for the mtls case (re-enrolling worker-1 replaces its certificate)
    ctx2 = party_context(fed, "worker-2", Path(args.fed).parent / "worker-2")
    enrolled = att.connect(
        "worker-2",
        "worker",
        ctx2.attester,
        ctx2.peer_verifier(fed.policy_for("ps")),
        ps.name,
        ps.address,
        ps.enroll_address,
    )
    join2 = pb.JoinRequest(config_digest=fed.training_digest())

    def mtls() -> float:
        creds = grpc.ssl_channel_credentials(
            root_certificates=enrolled.server_cert_pem,
            private_key=enrolled.identity.private_key_pem(),
            certificate_chain=enrolled.identity.cert_pem,
        )
        t = time.perf_counter()
        ch = grpc.secure_channel(ps.address, creds, options=att.GRPC_OPTIONS + override + LOCAL_POOL)
        pb_grpc.ParameterServerStub(ch).Join(join2, timeout=30)
        dt = time.perf_counter() - t
        ch.close()
        return dt

    times: dict[str, list[float]] = {"ratls": [], "tls": [], "tls_enroll": [], "mtls": []}
    for i in range(args.reps + 2):
        parts_before = dict(parts)
        r = {"ratls": ratls(), "tls": plain_tls("ping"), "tls_enroll": plain_tls("enroll"), "mtls": mtls()}
        if i < 2:  # warm-up: first-use costs (imports, grpc channel machinery)
            for k in list(parts):
                parts[k] = parts_before.get(k, 0.0)
            continue
        for k, v in r.items():
            times[k].append(v)
    n = args.reps
    out = {k: median(v) * 1000 for k, v in times.items()}
    out["breakdown_ms"] = {k: v / n * 1000 for k, v in parts.items()}
    out["samples_ms"] = {k: [round(x * 1000, 2) for x in v] for k, v in times.items()}
    print(json.dumps(out))


def tdx_main(args: argparse.Namespace) -> None:
    """P3-tdx: ``TdxVerifier.verify`` on the shared sample quote, cached collateral, as of SAMPLE_TIME."""
    from bench.common import REPO
    from tdxfl.attestation.tdx.collateral import FileCollateral
    from tdxfl.attestation.tdx.dcap import TdxVerifier, reporting_policy

    data = REPO / "tests" / "data" / "tdx"
    quote = (data / "tdx_quote").read_bytes()
    t = time.perf_counter()
    verifier = TdxVerifier(FileCollateral(data / "tdx_quote_collateral.json"), as_of=SAMPLE_TIME)
    first = verifier.verify(quote)
    cold = time.perf_counter() - t
    assert first.tcb_status, first
    verify, raw = [], []
    collateral = verifier.collateral.collateral_for(quote, SAMPLE_TIME)
    for _ in range(args.reps):
        t = time.perf_counter()
        verifier.verify(quote)
        verify.append(time.perf_counter() - t)
        t = time.perf_counter()
        verifier._qvl.verify_with_policy(quote, collateral, SAMPLE_TIME, reporting_policy(SAMPLE_TIME))
        raw.append(time.perf_counter() - t)
    print(
        json.dumps(
            {
                "verify_ms": median(verify) * 1000,
                "raw_qvl_ms": median(raw) * 1000,
                "cold_ms": cold * 1000,
                "tcb_status": first.tcb_status,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--workdir", required=True)
    c = sub.add_parser("client")
    c.add_argument("--fed", required=True)
    c.add_argument("--reps", type=int, default=20)
    t = sub.add_parser("tdx")
    t.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    {"serve": serve_main, "client": client_main, "tdx": tdx_main}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
