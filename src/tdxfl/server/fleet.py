"""The attested fleet: the parameter server's ``Fleet`` over the network.

Workers enroll with RA-TLS on the enrollment port, ``Join`` on the mutual-TLS federation port
and move tensors on the tensor link (:mod:`tdxfl.transport`); what they send is fed into the
engine's ``RoundState``, so the round loop sees the same fleet as in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tdxfl.attestation.interfaces import Attester
from tdxfl.attestation.ratls import PeerVerifier
from tdxfl.engine.fleet import PROGRESS_LOGGER, EventSink
from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.engine.rounds import RoundState, RoundStateFleet, log_event
from tdxfl.engine.strategy import Strategy
from tdxfl.server.service import ParameterServerService
from tdxfl.transport.attested import AttestedServer, role_table, split_address
from tdxfl.transport.link import LinkServer
from tdxfl.transport.proto import tdxfl_pb2 as pb
from tdxfl.transport.proto import tdxfl_pb2_grpc as pb_grpc
from tdxfl.transport.tensors import WireTensors, to_wire

__all__ = ["AttestedFleet", "PsAddresses"]

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


@dataclass(frozen=True)
class PsAddresses:
    """Where the PS listens: federation (gRPC, mutual TLS), enrollment, tensor link ("host:port";
    port 0 picks a free port, see ``AttestedFleet.addresses``)."""

    address: str
    enroll_address: str
    data_address: str


class AttestedFleet(RoundStateFleet[WireTensors]):
    """The workers behind the PS's three attested ports; implements ``Fleet``.

    Binds its ports on construction; ``start`` serves them, ``stop`` ends training for every
    worker and closes them.
    """

    def __init__(
        self,
        name: str,
        attester: Attester,
        verifier: PeerVerifier,
        addresses: PsAddresses,
        workers: Sequence[str],
        specs: Sequence[TensorSpec],
        strategy: Strategy,
        *,
        digest: str,
        max_concurrent_updates: int,
        transfer_timeout: float,
        max_handshakes: int = 64,
        on_event: EventSink = log_event,
        task_digest: bytes | None = None,
        run_id: str = "",
    ) -> None:
        """``max_handshakes`` bounds the tensor link's concurrent TLS handshakes; the PS's
        evidence claims ``task_digest`` when given; ``run_id`` is the run it serves (told to joining
        workers)."""
        self.state: RoundState[WireTensors] = RoundState(specs, strategy, on_event=on_event)
        self.server = AttestedServer(
            name,
            attester,
            verifier,
            addresses.address,
            addresses.enroll_address,
            roles=role_table([(w, "worker") for w in workers]),
            task_digest=task_digest,
        )
        self.service = ParameterServerService(
            self.server,
            self.state,
            workers,
            digest,
            max_concurrent_updates=max_concurrent_updates,
            transfer_timeout=transfer_timeout,
            run_id=run_id,
        )
        pb_grpc.add_ParameterServerServicer_to_server(self.service, self.server.main)
        self.links = LinkServer(
            split_address(addresses.data_address),
            self.server.link_context,
            self.server.link_party,
            self.service.serve_link,
            self.server.link_refused,
            max_handshakes=max_handshakes,
        )
        host = split_address(addresses.address)[0]
        self.addresses = PsAddresses(
            f"{host}:{self.server.port}",
            f"{split_address(addresses.enroll_address)[0]}:{self.server.enroll_port}",
            f"{split_address(addresses.data_address)[0]}:{self.links.port}",
        )

    def start(self) -> None:
        """Serve the three ports."""
        self.server.start()
        self.links.start()
        a = self.addresses
        progress.info(
            "parameter server listening on %s (enrollment %s, tensors %s)", a.address, a.enroll_address, a.data_address
        )

    def stop(self, linger: float = 5.0) -> None:
        """Tell every worker that training is over, give connected workers up to ``linger``
        seconds to hear it and hang up, then close every port."""
        self.state.finish()
        if not self.links.wait_closed(linger):
            log.info("closing tensor links that stayed open %.0fs after training ended", linger)
        self.links.stop()
        self.server.stop(grace=2.0)

    # -- Fleet (the rest is RoundStateFleet's) ------------------------------------------------
    def publish(self, version: int, weights: TensorSet) -> None:
        self.state.publish(version, to_wire(pb.TENSOR_KIND_MODEL, version, weights))  # shares weights' memory
