"""The parameter server's two faces: the gRPC ``ParameterServer`` service (``Join``, on the
mutual-TLS federation port) and the tensor-link handler (models out, updates in, on the data
port). Both know the attested party behind a call before anything else happens and hand the work
to the engine's ``RoundState``; every refusal goes back to the worker with its reason."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence

import grpc
import numpy as np

from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.rounds import FINISHED, RoundState, printable
from tdxfl.errors import LinkError, RecordError, Unavailable
from tdxfl.transport.attested import AttestedServer
from tdxfl.transport.link import TensorLink
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.run_end import done_message
from tdxfl.transport.tensors import Assembler, WireTensors, decode_header

log = logging.getLogger(__name__)
_PULL_WAIT_S = 30.0


class SlotTimeout(Unavailable):
    """No receive slot became free in time (the worker is told, and the step goes on without it)."""


class StagingPool:
    """At most ``slots`` updates are received at once, each into a reused preallocated buffer.

    A worker sends an update's data only once it holds a slot, so waiting pushes cost the
    server nothing and its memory stays O(slots x model) however many workers there are. A
    transfer that holds a slot longer than ``transfer_timeout`` seconds is cancelled, so a
    stalled peer cannot keep one.
    """

    def __init__(self, slots: int, transfer_timeout: float) -> None:
        self._sem = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._free: list[Assembler] = []
        self._timeout = transfer_timeout

    @contextlib.contextmanager
    def slot(self, specs: Sequence[TensorSpec], cancel: Callable[[], None]) -> Iterator[Assembler]:
        """Wait for a slot; an assembler for ``specs`` for the ``with`` block, which ``cancel()``
        is called on if it runs over the transfer timeout. SlotTimeout when none frees in time."""
        if not self._sem.acquire(timeout=self._timeout):
            raise SlotTimeout(f"server busy: no receive slot free within {self._timeout:.0f}s")
        watchdog = threading.Timer(self._timeout, cancel)
        watchdog.daemon = True
        watchdog.start()
        with self._lock:
            asm = next((a for a in self._free if a.specs == list(specs)), None)
            if asm is not None:
                self._free.remove(asm)
        try:
            if asm is None:
                asm = Assembler(specs)
            yield asm
        finally:
            watchdog.cancel()
            with self._lock:
                if asm is not None:
                    self._free.append(asm)
                    del self._free[:-4]
            self._sem.release()


class ParameterServerService(pb_grpc.ParameterServerServicer):
    """The parameter server's gRPC service and tensor-link handler.

    ``workers`` are the federation's worker names in file order (a worker's index is its
    position); ``digest`` is the hash of the training settings every worker must share.
    """

    def __init__(
        self,
        server: AttestedServer,
        rounds: RoundState[WireTensors],
        workers: Sequence[str],
        digest: str,
        *,
        max_concurrent_updates: int,
        transfer_timeout: float,
        run_id: str = "",
    ) -> None:
        #: the run served (set by the PS before it starts, kept across a resume) and this
        #: process's session: both go to every joining worker
        self.run_id = run_id
        self.session = secrets.token_hex(8)
        self._server = server
        self._rounds = rounds
        self._worker_index = {name: i for i, name in enumerate(workers)}
        self._digest = digest
        self._staging = StagingPool(max_concurrent_updates, transfer_timeout)

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        peer = self._server.peer_of(context)
        if request.config_digest != self._digest:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "training settings differ from the parameter server's (compare the [training], [strategy] and [privacy] tables and the task code: tdxfl attest --task)",
            )
        self._rounds.join(peer.party)
        return pb.JoinReply(
            worker_index=self._worker_index[peer.party],
            num_workers=len(self._worker_index),
            run_id=self.run_id,
            session=self.session,
        )

    # -- tensor link ----------------------------------------------------------------------
    def serve_link(self, party: str, link: TensorLink) -> None:
        """Answer ``party``'s pull and push requests until the link closes (LinkError)."""
        while True:
            request = link.recv(pb.LinkRequest)
            op = request.WhichOneof("op")
            if op == "pull":
                self._send_model(party, link, request.pull.after_version)
            elif op == "push":
                self._receive_update(party, link, request.push)
            elif op == "leave":
                self._rounds.leave(party, request.leave.reason)
            else:
                raise LinkError(f"{party} sent a request naming no operation")

    def _send_model(self, party: str, link: TensorLink, after_version: int) -> None:
        """The next model version, as the PS published it, or "done"."""
        while True:
            with self._rounds.sending(party, after_version, _PULL_WAIT_S, link.close, _wire_bytes) as model:
                if model is None:
                    continue
                wire = done_message(self._rounds.run_end) if model is FINISHED else model
                assert isinstance(wire, WireTensors)
                link.send(wire.header)
                link.send_raw(wire.views())
                return

    def _receive_update(self, party: str, link: TensorLink, offered: pb.TensorHeader) -> None:
        """Check the offered header (and that the update is wanted), wait for a receive slot, read
        the data into it, submit."""
        try:
            header = decode_header(offered)
            info = header.update_info()
            TensorSet(header.specs, []).check_compatible(self._rounds.specs, check_dtype=False)
        except RecordError as e:  # refused before any data moved: the link stays usable
            link.send(pb.PushGrant(granted=False, reason=self._refuse(party, str(e), malformed=True).reason))
            return
        try:
            self._rounds.check_offer(party, info)
        except RecordError as e:  # stale or duplicate: not worth receiving, and no fault of this step
            link.send(pb.PushGrant(granted=False, reason=self._refuse(party, str(e), malformed=False).reason))
            return
        try:
            with self._staging.slot(header.specs, link.close) as asm:
                link.send(pb.PushGrant(granted=True))
                try:
                    if header.compressed:  # sizes checked by decode_header: decoded into asm's buffers
                        received = asm.fill_encoded(link.recv_into, header)
                    else:
                        received = asm.fill(link.recv_into, check_finite=True)
                except LinkError as e:  # the worker (or its connection) crashed: not a refused update
                    self._rounds.leave(party, f"connection lost during its update: {e}")
                    raise
                except RecordError as e:  # NaN or infinity (or a malformed encoding), found as the data arrived
                    link.send(self._refuse(party, str(e), malformed=True))
                    return
                update = received.cast_to(self._rounds.specs)
                if any(header.relative):
                    try:
                        self._add_reference(party, info.version, header.relative, update)
                    except RecordError as e:  # stale by now, or weights that overflow
                        link.send(self._refuse(party, str(e), malformed=False))
                        return
                try:
                    self._rounds.submit(party, info, update, int(offered.total_bytes), finite_checked=True)
                except RecordError as e:  # became stale while it arrived: submit already recorded it
                    link.send(self._refuse(party, str(e), malformed=False))
                    return
        except SlotTimeout as e:
            link.send(pb.PushGrant(granted=False, reason=f"{e}; the step goes on without this update"))
            return
        link.send(pb.PushReply(accepted=True))

    def _add_reference(self, party: str, version: int, relative: Sequence[bool], update: TensorSet) -> None:
        """Turn a compressed update's changes back into weights: add the global model of
        ``version`` (as published, held against ``retire`` meanwhile) where ``relative`` says;
        RecordError when that model is gone (the update is stale) or the sum is not finite."""
        with self._rounds.sending(party, version - 1, 0.0, _nothing, _no_bytes) as model:
            if not isinstance(model, WireTensors) or self._rounds.version != version:
                raise RecordError(f"stale update for version {version}; the current version is {self._rounds.version}")
            for rel, spec, out, ref in zip(relative, update.specs, update.arrays, model.arrays):
                if rel:
                    np.add(out, ref, out=out, casting="unsafe")
                    if not np.isfinite(out).all():
                        raise RecordError(f"tensor {spec.name!r} holds NaN or infinite values")

    def _refuse(self, party: str, reason: str, *, malformed: bool) -> pb.PushReply:
        if not malformed:  # a malformed update is logged as the REFUSED event reject() reports
            log.warning("update from %s rejected: %s", printable(party), printable(reason))
        if malformed:
            self._rounds.reject(party, reason)
        return pb.PushReply(accepted=False, reason=reason)


def _nothing() -> None:
    return None


def _no_bytes(model: object) -> int:
    return 0


def _wire_bytes(model: WireTensors) -> int:
    return model.nbytes
