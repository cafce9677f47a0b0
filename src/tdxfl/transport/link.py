"""The tensor link: models and updates between two attested parties over one TLS 1.3 connection,
written from and read into numpy memory.

gRPC carries enrollment and control; tensors (94 MB per ResNet-50 update) travel here, because
grpcio's per-message path cost 1.8x a raw TLS socket moving the same bytes (bench P1). The link
uses the RA-TLS identities of the attested gRPC connection: the client pins the server's
attested certificate, the server admits only enrolled clients' certificates (exact match), both
sides present their certificate and refuse anything older than TLS 1.3 during the handshake.

Wire: every message is a 4-byte big-endian length and one protobuf message; raw tensor bytes
follow a ``TensorHeader`` where the protocol says so (``tdxfl.proto``, ``LinkRequest``).
TLS runs through memory BIOs so that the socket is read and written up to 256 KiB per system
call (``SSLSocket.recv_into`` returns one 16 KiB record per call); decrypted bytes go straight
into the receiver's arrays.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, cast

from google.protobuf.message import DecodeError, Message

from tdxfl.errors import LinkError

log = logging.getLogger(__name__)

IO_BYTES = 1 << 18
#: largest control message (a header of a model with many tensors is tens of kB)
MAX_MESSAGE_BYTES = 16 << 20
HANDSHAKE_TIMEOUT_S = 10.0
_LENGTH = struct.Struct("!I")
M = TypeVar("M", bound=Message)


class ByteStream(Protocol):
    """A reliable, ordered byte stream (TLS here; bench code also uses a plaintext socket)."""

    def sendall(self, data: memoryview) -> None: ...
    def send_many(self, views: Sequence[memoryview]) -> None: ...
    def recv_into(self, view: memoryview) -> None: ...
    def close(self) -> None: ...


def _keepalive(sock: socket.socket) -> None:
    """Notice a vanished peer within ~25 s on an idle link (a worker may train for minutes)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


def _explain(e: OSError) -> str:
    """An SSL error in words; a TLS alert from the peer means it refused us."""
    reason = getattr(e, "reason", None) or ""
    if "ALERT" in reason:
        return f"the peer refused the connection (TLS alert {reason.split('ALERT_', 1)[-1].lower()}: our certificate is not one it trusts, or TLS 1.3 was not offered)"
    return str(e)


class TlsStream:
    """TLS over a blocking socket through memory BIOs, moving up to ``IO_BYTES`` per system call."""

    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        """Run the handshake (``sock``'s timeout applies); LinkError when it fails."""
        self._sock = sock
        self._buf = bytearray(IO_BYTES)
        self._buf_view = memoryview(self._buf)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        try:
            while True:
                try:
                    self._tls.do_handshake()
                    self._flush()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    self._fill()
        except (ssl.SSLError, OSError) as e:
            try:
                self._flush()  # our alert, if any, tells the peer why
            except OSError:
                pass
            raise LinkError(f"TLS handshake failed: {_explain(e)}") from None

    def peer_certificate(self) -> bytes:
        """The peer's certificate (DER), verified against the context's pinned trust set."""
        der = self._tls.getpeercert(binary_form=True)
        if not der:
            raise LinkError("peer presented no certificate")
        return der

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._sock.sendall(data)

    def _fill(self) -> None:
        n = self._sock.recv_into(self._buf)
        if not n:
            raise LinkError("connection closed by peer")
        self._in.write(self._buf_view[:n])

    def sendall(self, data: memoryview) -> None:
        """Encrypt and send all of ``data``."""
        self.send_many([data])

    def send_many(self, views: Sequence[memoryview]) -> None:
        """Encrypt and send the bytes of ``views`` in order, in system calls of about ``IO_BYTES``
        (many small tensors do not cost a system call each)."""
        try:
            for data in views:
                for i in range(0, len(data), IO_BYTES):
                    self._tls.write(data[i : i + IO_BYTES])
                    if self._out.pending >= IO_BYTES:
                        self._flush()
            self._flush()
        except (ssl.SSLError, OSError) as e:
            raise LinkError(f"send failed: {_explain(e)}") from None

    def recv_into(self, view: memoryview) -> None:
        """Receive exactly ``len(view)`` bytes, decrypted into ``view``."""
        got = 0
        try:
            while got < len(view):
                try:
                    n = cast(int, self._tls.read(len(view) - got, view[got:]))  # with a buffer: a count
                except ssl.SSLWantReadError:
                    self._fill()
                    continue
                if n == 0:
                    raise LinkError("connection closed by peer")
                got += n
        except ssl.SSLZeroReturnError:
            raise LinkError("connection closed by peer") from None
        except (ssl.SSLError, OSError) as e:
            raise LinkError(f"receive failed: {_explain(e)}") from None

    def close(self) -> None:
        """Close the connection; a thread blocked on it gets LinkError."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class TensorLink:
    """Length-prefixed protobuf messages and raw tensor bytes over a byte stream."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream

    def send(self, message: Message) -> None:
        """Send one message."""
        body = message.SerializeToString()
        self.stream.sendall(memoryview(_LENGTH.pack(len(body)) + body))

    def send_raw(self, views: Sequence[memoryview]) -> None:
        """Send the bytes of ``views`` (e.g. tensors' memory) as they are, in order."""
        self.stream.send_many(views)

    def recv(self, message_type: type[M]) -> M:
        """The next message, parsed as ``message_type``; LinkError when it is not one."""
        prefix = bytearray(_LENGTH.size)
        self.stream.recv_into(memoryview(prefix))
        (length,) = _LENGTH.unpack(prefix)
        if length > MAX_MESSAGE_BYTES:
            raise LinkError(f"message of {length} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
        body = bytearray(length)
        self.stream.recv_into(memoryview(body))
        try:
            return message_type.FromString(bytes(body))
        except DecodeError as e:
            raise LinkError(f"malformed {message_type.__name__}: {e}") from None

    def recv_into(self, views: Sequence[memoryview]) -> None:
        """Fill each of ``views`` with raw bytes, in order."""
        for view in views:
            self.stream.recv_into(view)

    def close(self) -> None:
        """Close the link."""
        self.stream.close()


def open_link(
    address: tuple[str, int], ctx: ssl.SSLContext, server_hostname: str, pinned_der: bytes, *, timeout: float = 30.0
) -> TensorLink:
    """Connect, handshake with ``ctx`` (client side) and check that the server presented exactly
    the pinned certificate; LinkError otherwise."""
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as e:
        raise LinkError(f"cannot reach {address[0]}:{address[1]}: {e}") from None
    try:
        _keepalive(sock)
        stream = TlsStream(sock, ctx, server_side=False, server_hostname=server_hostname)
        if stream.peer_certificate() != pinned_der:
            raise LinkError("the server presented another certificate than the attested one")
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return TensorLink(stream)


class LinkServer:
    """Accepts tensor links: a TLS 1.3 handshake against the current trust set, the client
    certificate mapped to its enrolled party, then ``serve(party, link)`` on a thread of its own.

    ``context()`` returns the server context to use for the next handshake (the trust set
    changes as parties enroll); ``party_of(der)`` names the enrolled party behind a client
    certificate, or None; ``refused(peer_address, reason)`` records a refused connection.
    Threads stay bounded whoever connects: at most ``max_handshakes`` handshakes at once (more
    connections are closed at once) and one link per party (a party's new link closes its old).
    """

    def __init__(
        self,
        address: tuple[str, int],
        context: Callable[[], ssl.SSLContext],
        party_of: Callable[[bytes], str | None],
        serve: Callable[[str, TensorLink], None],
        refused: Callable[[str, str], None],
        *,
        max_handshakes: int = 64,
    ) -> None:
        self._context = context
        self._party_of = party_of
        self._serve = serve
        self._refused = refused
        self._handshakes = threading.BoundedSemaphore(max_handshakes)
        self._pending = 0  # handshakes in progress
        self._listener = socket.create_server(address)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._links: dict[str, TensorLink] = {}
        self._closed = False

    def start(self) -> None:
        """Accept connections on a background thread."""
        threading.Thread(target=self._accept_loop, name="tensor-link-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return  # listener closed by stop()
            peer = f"{addr[0]}:{addr[1]}"
            if not self._handshakes.acquire(blocking=False):
                self._refused(peer, "too many TLS handshakes in progress")
                sock.close()
                continue
            with self._lock:
                self._pending += 1
            threading.Thread(target=self._handle, args=(sock, peer), name="tensor-link", daemon=True).start()

    def _handle(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            _keepalive(sock)
            stream = TlsStream(sock, self._context(), server_side=True)
            party = self._party_of(stream.peer_certificate())
            if party is None:
                raise LinkError("client certificate is not an enrolled, attested party")
            sock.settimeout(None)
        except (LinkError, OSError) as e:
            self._refused(peer, str(e))
            sock.close()
            return
        finally:
            with self._lock:
                self._pending -= 1
            self._handshakes.release()
        link = TensorLink(stream)
        with self._lock:
            if self._closed:
                link.close()
                return
            old = self._links.get(party)
            self._links[party] = link
        if old is not None:
            log.info("new tensor link from %s: closing its previous one", party)
            old.close()
        try:
            self._serve(party, link)
        except LinkError as e:
            log.info("tensor link of %s closed: %s", party, e)
        finally:
            with self._lock:
                if self._links.get(party) is link:
                    del self._links[party]
                    self._lock.notify_all()
            link.close()

    @property
    def handshakes_in_progress(self) -> int:
        """TLS handshakes running now (at most ``max_handshakes``)."""
        with self._lock:
            return self._pending

    def wait_closed(self, timeout: float) -> bool:
        """Wait until no link is open (every peer hung up), at most ``timeout`` seconds; whether
        that happened."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._links, timeout)

    def stop(self) -> None:
        """Stop accepting and close every open link."""
        with self._lock:
            self._closed = True
            links = list(self._links.values())
        try:  # wakes the accept loop (close alone does not), so the port is free when this returns
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not listening (any more)
        self._listener.close()
        for link in links:
            link.close()
