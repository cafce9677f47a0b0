"""Mutually attested gRPC: an enrollment port for evidence exchange, a mutual-TLS port for work.

Server side (``AttestedServer``): the party's RA-TLS certificate is served on two gRPC servers.
The *enrollment* server (TLS, no client certificate) hands out single-use nonces, appraises a
client's RA-TLS certificate that answers one, and returns fresh evidence for the client's own
nonce. The *main* server requires mutual TLS with a client certificate from the set of enrolled
certificates, which it updates at run time (``grpc.dynamic_ssl_server_credentials``); handlers
map the TLS peer certificate back to the enrolled party with ``peer_of``.

Client side (``connect``): fetch the server's certificate, demand fresh evidence bound to its
key and our nonce, appraise it, pin that exact certificate, enroll with a certificate answering
the server's nonce, then open the mutual-TLS channel. Nothing moves before both sides accepted.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection
from concurrent import futures
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.serialization import Encoding

from tdxfl.attestation.decisions import Decision
from tdxfl.attestation.interfaces import Attester
from tdxfl.attestation.ratls import (
    PeerVerifier,
    TlsIdentity,
    certificate_evidence,
    certificate_fingerprint,
    load_certificate,
    tls_name,
)
from tdxfl.errors import AttestationError, AttestationRefused, ConfigError
from tdxfl.transport.link import TensorLink, open_link
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc

NONCE_BYTES = 32
NONCE_TTL_S = 120.0
_MAX_OUTSTANDING_NONCES = 4096
MAX_MESSAGE_BYTES = 64 << 20
GRPC_OPTIONS = [
    # a port is this server's alone: a second party started on it fails to bind (servers only)
    ("grpc.so_reuseport", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # clients ping every 10 s so a dead peer is noticed within ~15 s ...
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # ... and servers accept those pings (their default minimum interval is 5 minutes, after
    # which an idle connection is closed with GOAWAY too_many_pings)
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass(frozen=True)
class EnrolledPeer:
    """A client that passed attestation: its party name, role and pinned certificate."""

    party: str
    role: str
    cert_pem: bytes


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` into its parts; ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be host:port")
    return host.strip("[]"), int(port)


class AttestedServer:
    """A party's attested gRPC endpoint pair (enrollment + mutual TLS)."""

    def __init__(
        self,
        party: str,
        attester: Attester,
        verifier: PeerVerifier,
        address: str,
        enroll_address: str,
        *,
        roles: Callable[[str], str | None],
        max_workers: int = 32,
        task_digest: bytes | None = None,
    ) -> None:
        """``roles(party)`` names the role a client party may enroll as, or None if unknown; our
        evidence (certificate and fresh) claims ``task_digest`` when given."""
        self.party = party
        self._attester = attester
        self._verifier = verifier
        self._roles = roles
        self.identity = TlsIdentity.create(attester, party, task_digest=task_digest)
        self._lock = threading.Lock()
        self._nonces: dict[bytes, float] = {}
        self._enrolled: dict[str, EnrolledPeer] = {}  # certificate fingerprint -> peer
        self._by_party: dict[str, str] = {}
        self._config_version = 0
        self._served_version = -1
        self._link_context: tuple[int, ssl.SSLContext] | None = None
        pool = futures.ThreadPoolExecutor(max_workers=max_workers)
        self.main = grpc.server(pool, options=GRPC_OPTIONS, maximum_concurrent_rpcs=max_workers * 4)
        self.enrollment = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
        pb_grpc.add_EnrollmentServicer_to_server(_EnrollmentService(self), self.enrollment)
        key_cert = [(self.identity.private_key_pem(), self.identity.cert_pem)]
        self.enroll_port = _bind(self.enrollment, enroll_address, grpc.ssl_server_credentials(key_cert))
        creds = grpc.dynamic_ssl_server_credentials(
            self._certificate_configuration(), self._fetch_configuration, require_client_authentication=True
        )
        self.port = _bind(self.main, address, creds)

    # -- mutual-TLS trust set -------------------------------------------------------------
    def _trusted_pem(self) -> bytes:
        # no enrolled party yet: trust only our own certificate, which no client can present
        return b"".join(p.cert_pem for p in self._enrolled.values()) or self.identity.cert_pem

    def _certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        with self._lock:
            roots = self._trusted_pem()
            self._served_version = self._config_version
        return grpc.ssl_server_certificate_configuration(
            [(self.identity.private_key_pem(), self.identity.cert_pem)], root_certificates=roots
        )

    def _fetch_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            changed = self._config_version != self._served_version
        return self._certificate_configuration() if changed else None

    def peer_of(self, context: grpc.ServicerContext) -> EnrolledPeer:
        """The enrolled party behind an RPC on the main port; aborts UNAUTHENTICATED otherwise."""
        auth = context.auth_context()
        versions = auth.get("ssl_tls_version") or [b"?"]
        if versions[0] != b"TLSv1.3":
            # grpcio cannot set a minimum TLS version; refuse older protocols after the handshake.
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"TLS 1.3 required, peer negotiated {versions[0].decode()}")
        certs = auth.get("x509_pem_cert") or []
        peer = None
        if certs:
            with self._lock:
                peer = self._enrolled.get(certificate_fingerprint(certs[0]))
        if peer is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate is not an enrolled, attested party")
        assert peer is not None
        return peer

    # -- tensor link (tdxfl.transport.link.LinkServer callbacks) ---------------------------------
    def link_context(self) -> ssl.SSLContext:
        """Server TLS 1.3 context for tensor links, trusting exactly the enrolled certificates."""
        with self._lock:
            cached = self._link_context
            if cached is not None and cached[0] == self._config_version:
                return cached[1]
            version, trusted = self._config_version, self._trusted_pem()
        ctx = self.identity.tls13_context(server_side=True, trusted_pem=trusted)
        with self._lock:
            self._link_context = (version, ctx)
        return ctx

    def link_party(self, cert_der: bytes) -> str | None:
        """The enrolled party whose certificate this is (exactly), or None."""
        with self._lock:
            peer = self._enrolled.get(certificate_fingerprint(cert_der))
        return peer.party if peer is not None else None

    def link_refused(self, peer_address: str, reason: str) -> None:
        """Record a refused tensor-link connection in the decision log."""
        self._verifier.decisions.record(_refusal(self.party, f"tensor link from {peer_address}", reason))

    def enrolled(self) -> list[EnrolledPeer]:
        """Currently enrolled peers."""
        with self._lock:
            return list(self._enrolled.values())

    # -- enrollment -----------------------------------------------------------------------
    def new_nonce(self) -> bytes:
        """A fresh single-use challenge nonce."""
        nonce = os.urandom(NONCE_BYTES)
        now = time.monotonic()
        with self._lock:
            expired = [n for n, t in self._nonces.items() if t < now]
            for n in expired:
                del self._nonces[n]
            if len(self._nonces) >= _MAX_OUTSTANDING_NONCES:
                del self._nonces[next(iter(self._nonces))]
            self._nonces[nonce] = now + NONCE_TTL_S
        return nonce

    def _take_nonce(self, nonce: bytes | None) -> bool:
        with self._lock:
            expiry = self._nonces.pop(nonce, None) if nonce is not None else None
        return expiry is not None and expiry >= time.monotonic()

    def enroll(self, party: str, role: str, cert_pem: bytes) -> tuple[bool, str]:
        """Appraise a client's certificate; on success, admit it to the mutual-TLS port."""
        expected_role = self._roles(party)
        if expected_role is None or expected_role != role:
            reason = f"party {party!r} may not enroll as {role!r} here"
            self._verifier.decisions.record(_refusal(self.party, party, reason))
            return False, reason
        try:
            nonce = certificate_evidence(load_certificate(cert_pem)).parsed_claims().nonce
        except AttestationError as e:
            self._verifier.decisions.record(_refusal(self.party, party, str(e)))
            return False, str(e)
        if not self._take_nonce(nonce):
            reason = "evidence answers no outstanding challenge of ours (replayed or expired nonce)"
            self._verifier.decisions.record(_refusal(self.party, party, reason))
            return False, reason
        appraisal = self._verifier.appraise(party, certificate=cert_pem, nonce=nonce)
        if not appraisal.decision.accepted:
            return False, appraisal.decision.reason
        peer = EnrolledPeer(party, role, cert_pem)
        with self._lock:
            old = self._by_party.pop(party, None)
            if old is not None:
                self._enrolled.pop(old, None)
            fp = certificate_fingerprint(cert_pem)
            self._enrolled[fp] = peer
            self._by_party[party] = fp
            self._config_version += 1
        return True, appraisal.decision.reason

    def start(self) -> None:
        """Start both servers."""
        self.enrollment.start()
        self.main.start()

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop both servers."""
        self.main.stop(grace)
        self.enrollment.stop(grace)


def _bind(server: grpc.Server, address: str, creds: grpc.ServerCredentials) -> int:
    """Bind ``server`` to ``address``; ConfigError (not a traceback) when the port is taken."""
    try:
        return server.add_secure_port(address, creds)
    except RuntimeError as e:
        raise ConfigError(f"cannot listen on {address}: {e} (is another party running?)") from None


def _refusal(me: str, peer: str, reason: str) -> Decision:
    return Decision(me, peer, "refused", reason)


class _EnrollmentService(pb_grpc.EnrollmentServicer):
    def __init__(self, server: AttestedServer) -> None:
        self._server = server

    def Enroll(self, request: pb.EnrollRequest, context: grpc.ServicerContext) -> pb.EnrollReply:
        accepted, reason = self._server.enroll(request.party, request.role, request.certificate_pem)
        return pb.EnrollReply(accepted=accepted, reason=reason)

    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestReply:
        if len(request.nonce) < 16 or len(request.nonce) > 64:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nonce must be 16 to 64 bytes")
        evidence = self._server.identity.fresh_evidence(self._server._attester, request.nonce)
        return pb.AttestReply(evidence=evidence, challenge=self._server.new_nonce())


def fetch_server_certificate(address: str, timeout: float = 10.0) -> bytes:
    """The PEM certificate a TLS 1.3 server presents. Deliberately unverified here: the caller
    appraises its attestation evidence and then pins exactly this certificate."""
    host, port = split_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the attestation evidence, then pinning
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise AttestationRefused(f"{address} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


@dataclass
class AttestedChannel:
    """A mutual-TLS channel to an attested server, and our identity on it."""

    channel: grpc.Channel
    identity: TlsIdentity
    server_party: str
    server_cert_pem: bytes

    def open_link(self, address: str, timeout: float = 30.0) -> TensorLink:
        """A tensor link to the same server's data port: mutual TLS 1.3 with our enrolled identity,
        accepting only the server certificate attested here. LinkError when refused or unreachable."""
        ctx = self.identity.tls13_context(server_side=False, trusted_pem=self.server_cert_pem)
        pinned = load_certificate(self.server_cert_pem).public_bytes(Encoding.DER)
        return open_link(split_address(address), ctx, tls_name(self.server_party), pinned, timeout=timeout)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def connect(
    party: str,
    role: str,
    attester: Attester,
    verifier: PeerVerifier,
    server_party: str,
    address: str,
    enroll_address: str,
    *,
    timeout: float = 30.0,
    task_digest: bytes | None = None,
) -> AttestedChannel:
    """Attest ``server_party`` (fresh evidence for our nonce), enroll ourselves (evidence claiming
    ``task_digest`` when given), open mutual TLS.

    Raises AttestationRefused when either side refuses, grpc.RpcError / OSError when the
    server cannot be reached.
    """
    server_cert = fetch_server_certificate(enroll_address, timeout)
    override = [("grpc.ssl_target_name_override", tls_name(server_party))]
    enroll_channel = grpc.secure_channel(
        enroll_address, grpc.ssl_channel_credentials(root_certificates=server_cert), options=override
    )
    try:
        stub = pb_grpc.EnrollmentStub(enroll_channel)
        our_nonce = os.urandom(NONCE_BYTES)
        attested = stub.Attest(pb.AttestRequest(nonce=our_nonce), timeout=timeout)
        appraisal = verifier.appraise(
            server_party, certificate=server_cert, evidence=attested.evidence, nonce=our_nonce
        )
        if not appraisal.decision.accepted:
            raise AttestationRefused(f"we refused {server_party}: {appraisal.decision.reason}")
        their_nonce = attested.challenge
        identity = TlsIdentity.create(attester, party, nonce=their_nonce, task_digest=task_digest)
        reply = stub.Enroll(
            pb.EnrollRequest(party=party, role=role, certificate_pem=identity.cert_pem), timeout=timeout
        )
        if not reply.accepted:
            raise AttestationRefused(f"{server_party} refused us: {reply.reason}")
    except AttestationRefused:
        raise
    except AttestationError as e:
        raise AttestationRefused(f"we refused {server_party}: {e}") from e
    finally:
        enroll_channel.close()
    creds = grpc.ssl_channel_credentials(
        root_certificates=server_cert,
        private_key=identity.private_key_pem(),
        certificate_chain=identity.cert_pem,
    )
    channel = grpc.secure_channel(address, creds, options=GRPC_OPTIONS + override)
    return AttestedChannel(channel, identity, server_party, server_cert)


def role_table(parties: Collection[tuple[str, str]]) -> Callable[[str], str | None]:
    """``roles`` callback for AttestedServer from (party, role) pairs."""
    table = dict(parties)
    return table.get
