"""The ParameterServer gRPC service: authenticates each call's attested peer, then hands the
work to ``RoundState``. Every refusal goes back to the worker with its reason."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import grpc

from tdxfl.config import Federation
from tdxfl.core.records import RecordError, TensorSpec
from tdxfl.server.rounds import RoundState
from tdxfl.transport.attested import AttestedServer
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.tensors import Assembler, StreamError, as_dtype, as_is, decode_header, parse_frame

log = logging.getLogger(__name__)
_PULL_WAIT_S = 30.0
_DONE = pb.TensorFrame(header=pb.TensorHeader(kind="done")).SerializeToString()


def add_to_server(service: ParameterServerService, server: grpc.Server) -> None:
    """Register ``service``. Pull's responses are frames serialized once per model version
    (``serialize_stream``) and sent to every worker as they are, not re-serialized per worker;
    Push's frames arrive unparsed and ``parse_frame`` takes chunks without copying them."""
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tdxfl.v1.ParameterServer",
                {
                    "Join": grpc.unary_unary_rpc_method_handler(
                        service.Join, pb.JoinRequest.FromString, pb.JoinReply.SerializeToString
                    ),
                    "Pull": grpc.unary_stream_rpc_method_handler(service.Pull, pb.PullRequest.FromString, as_is),
                    "Admit": grpc.unary_unary_rpc_method_handler(
                        service.Admit, pb.AdmitRequest.FromString, pb.AdmitReply.SerializeToString
                    ),
                    "Push": grpc.stream_unary_rpc_method_handler(service.Push, as_is, pb.PushReply.SerializeToString),
                },
            ),
        )
    )


class StagingPool:
    """At most ``slots`` updates are received at once, each into a reused preallocated buffer.

    Workers ask for a slot first (``admit``), so waiting pushes hold no stream open and the
    server's memory stays O(slots x model) however many workers there are; a push that was not
    admitted (an older client) takes a slot itself. A grant not used within ``transfer_timeout``
    seconds lapses, and a stream that holds a slot longer than that is cancelled, so a stalled
    peer cannot keep one.
    """

    def __init__(self, slots: int, transfer_timeout: float) -> None:
        self._sem = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._free: list[Assembler] = []
        self._granted: dict[str, threading.Timer] = {}
        self._timeout = transfer_timeout

    def admit(self, party: str, context: grpc.ServicerContext) -> bool:
        """Wait (while the call is alive) for a slot for ``party``'s next push; False on timeout."""
        with self._lock:
            if party in self._granted:
                return True
        deadline = time.monotonic() + self._timeout
        while not self._sem.acquire(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or not context.is_active():
                return False
        timer = threading.Timer(self._timeout, self._lapse, (party,))
        timer.daemon = True
        with self._lock:
            self._granted[party] = timer
        timer.start()
        return True

    def _lapse(self, party: str) -> None:
        with self._lock:
            timer = self._granted.pop(party, None)
        if timer is not None:
            self._sem.release()

    @contextlib.contextmanager
    def assembler(self, party: str, specs: Sequence[TensorSpec], context: grpc.ServicerContext) -> Iterator[Assembler]:
        """A reset assembler for ``specs``, held for the duration of the ``with`` block."""
        with self._lock:
            grant = self._granted.pop(party, None)
        if grant is not None:
            grant.cancel()
        elif not self._sem.acquire(timeout=self._timeout):
            raise StreamError(f"server busy: no receive slot free within {self._timeout:.0f}s")
        watchdog = threading.Timer(self._timeout, context.cancel)
        watchdog.daemon = True
        watchdog.start()
        with self._lock:
            asm = next((a for a in self._free if a.specs == list(specs)), None)
            if asm is not None:
                self._free.remove(asm)
        try:
            if asm is None:
                asm = Assembler(specs)
            asm.reset()
            yield asm
        finally:
            watchdog.cancel()
            with self._lock:
                if asm is not None:
                    self._free.append(asm)
                    del self._free[: -4]
            self._sem.release()


class ParameterServerService(pb_grpc.ParameterServerServicer):
    """gRPC face of the parameter server."""

    def __init__(self, federation: Federation, server: AttestedServer, rounds: RoundState) -> None:
        self._fed = federation
        self._server = server
        self._rounds = rounds
        self._worker_index = {p.name: i for i, p in enumerate(federation.workers)}
        self._staging = StagingPool(federation.faults.max_concurrent_updates, federation.faults.step_timeout_s)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        peer = self._server.peer_of(context)
        digest = self._fed.training_digest()
        if request.config_digest != digest:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "training settings differ from the parameter server's (compare the [training] tables)",
            )
        self._rounds.join(peer.party)
        log.info("worker %s joined", peer.party)
        return pb.JoinReply(
            worker_index=self._worker_index[peer.party], num_workers=len(self._worker_index), config_digest=digest
        )

    def Pull(self, request: pb.PullRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Stream the next model version as pre-serialized ``TensorFrame`` bytes (see add_to_server)."""
        peer = self._server.peer_of(context)
        while context.is_active():
            got = self._rounds.frames_after(peer.party, request.after_version, _PULL_WAIT_S)
            if got is None:
                continue
            version, frames = got
            if version < 0:
                yield _DONE
                return
            yield from frames
            return

    def Admit(self, request: pb.AdmitRequest, context: grpc.ServicerContext) -> pb.AdmitReply:
        """Grant a receive slot for the caller's next Push (waits for one)."""
        peer = self._server.peer_of(context)
        if self._staging.admit(peer.party, context):
            return pb.AdmitReply(granted=True)
        return pb.AdmitReply(granted=False, reason="no receive slot free in time; the step goes on without this update")

    def Push(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext) -> pb.PushReply:
        """Receive one update: raw frames (see add_to_server), chunks copied once into place."""
        peer = self._server.peer_of(context)
        try:
            first = parse_frame(next(request_iterator))
            if isinstance(first, memoryview):
                raise StreamError("stream must start with a header frame")
            header = decode_header(first)
            with self._staging.assembler(peer.party, header.specs, context) as asm:
                for raw in request_iterator:
                    chunk = parse_frame(raw)
                    if not isinstance(chunk, memoryview):
                        raise StreamError("a second header frame in one stream")
                    asm.feed(chunk)
                update = as_dtype(asm.finish(), self._rounds.specs)
                weight = float(header.num_samples) if self._rounds.update_kind == "weights" else 1.0
                try:
                    self._rounds.submit(
                        peer.party, header.kind, header.version, update, weight, header.metrics, asm.received
                    )
                except RecordError as e:  # stale, duplicate or non-finite: submit already recorded it
                    return self._refuse(peer.party, str(e), malformed=False)
        except StopIteration:
            return self._refuse(peer.party, "empty update stream", malformed=True)
        except (StreamError, RecordError) as e:
            return self._refuse(peer.party, str(e), malformed=True)
        return pb.PushReply(accepted=True)

    def _refuse(self, party: str, reason: str, *, malformed: bool) -> pb.PushReply:
        log.warning("update from %s rejected: %s", party, reason)
        if malformed:
            self._rounds.reject(party, reason)
        return pb.PushReply(accepted=False, reason=reason)
