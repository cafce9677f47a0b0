"""Baseline for P1: a raw TLS 1.3 socket program moving P1's bytes in P1's pattern.

``python -m bench.tls_baseline server --nbytes N --rounds R --clients 2``

The server (Python ``ssl``, self-signed ECDSA P-384 certificate, TLS 1.3 only) spawns the client
processes, which connect once. Per round it sends ``N`` bytes to every client at once (one
thread per connection), each client reads them into a preallocated buffer and then sends its own
``N`` bytes back, which the server reads into a per-client buffer. A round is timed from the
first send to the last byte received. No framing, no copies beyond what ``ssl`` does: the floor
that any TLS transport of these bytes on this machine pays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time

from bench.common import log, spawn

READ = 1 << 20


def _self_signed(directory: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.invalid")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


class BioTls:
    """TLS over a blocking socket through memory BIOs, moving 1 MiB per syscall.

    ``SSLSocket.recv_into`` returns one 16 KiB record per call and so pays a socket read (and,
    on this VM, a scheduler wake-up) per record: ~180 MB/s on loopback. Feeding OpenSSL from
    1 MiB socket reads, as gRPC's transport does, is the fair floor for "raw TLS".
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else "bench.invalid",
        )
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(READ)
        if not data:
            raise ConnectionError("peer closed early")
        self.incoming.write(data)

    def sendall(self, view: memoryview) -> None:
        for i in range(0, len(view), READ):
            self.obj.write(view[i : i + READ])
            self._flush()

    def recv_exact(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                got += self.obj.read(len(view) - got, view[got:])
            except ssl.SSLWantReadError:
                self._fill()

    def cipher(self) -> str:
        c = self.obj.cipher()
        return f"{self.obj.version()} {c[0] if c else '?'}"


def server_main(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-tls-")
    cert, key = _self_signed(tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    n = args.nbytes
    payload = memoryview(os.urandom(1 << 20) * (n // (1 << 20)) + os.urandom(n % (1 << 20)))
    procs = [
        spawn(
            "tls_baseline",
            "client",
            "--port",
            str(port),
            "--cert",
            cert,
            "--nbytes",
            str(n),
            "--rounds",
            str(args.rounds),
            "--seed",
            str(i),
        )
        for i in range(args.clients)
    ]
    conns = []
    for _ in range(args.clients):
        raw, _ = listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(BioTls(raw, ctx, server_side=True))
    bufs = [bytearray(n) for _ in conns]
    times = []
    cipher = conns[0].cipher()
    for r in range(args.rounds):
        barrier = threading.Barrier(len(conns) + 1)

        def serve(c: BioTls, buf: bytearray, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            c.sendall(payload)
            c.recv_exact(memoryview(buf))

        threads = [threading.Thread(target=serve, args=(c, b)) for c, b in zip(conns, bufs)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join()
        times.append(time.monotonic() - t0)
        log(f"TLS baseline round {r}: {times[-1]:.3f}s")
        time.sleep(0.2)
    for c in conns:
        c.sendall(memoryview(struct.pack("!B", 0)))
        c.sock.close()
    for p in procs:
        p.wait(30)
    print(json.dumps({"round_s": times, "cipher": cipher}))


def client_main(args: argparse.Namespace) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(args.cert)
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", args.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = BioTls(raw, ctx, server_side=False)
    n = args.nbytes
    payload = memoryview(os.urandom(1 << 20) * (n // (1 << 20)) + os.urandom(n % (1 << 20)))
    buf = memoryview(bytearray(n))
    for _ in range(args.rounds):
        sock.recv_exact(buf)
        sock.sendall(payload)
    sock.recv_exact(memoryview(bytearray(1)))
    sock.sock.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--nbytes", type=int, required=True)
    s.add_argument("--rounds", type=int, required=True)
    s.add_argument("--clients", type=int, default=2)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--cert", required=True)
    c.add_argument("--nbytes", type=int, required=True)
    c.add_argument("--rounds", type=int, required=True)
    c.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    (server_main if args.cmd == "server" else client_main)(args)


if __name__ == "__main__":
    sys.exit(main())
