"""The two roles of remote attestation, after MarbleRun's Issuer/Validator split.

An ``Attester`` runs inside a TD and turns 64 bytes of REPORTDATA into signed evidence (a
quote). A ``Verifier`` checks a quote's signature chain and TCB and returns the measured
identity; it judges nothing against policy (``Policy`` does that), so one verifier serves every
policy. There is one verifier per evidence kind; the kind travels as the CBOR tag of the
certificate's evidence extension.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field

from tdxfl.attestation.report import TdReport
from tdxfl.errors import AttestationError

log = logging.getLogger(__name__)

REPORT_DATA_SIZE = 64


@dataclass(frozen=True)
class PlatformFlags:
    """Properties of the host platform that a TDX quote's TCB evaluation reports."""

    dynamic_platform: bool = False
    cached_keys: bool = False
    smt_enabled: bool = False


@dataclass(frozen=True)
class VerifiedEvidence:
    """What a verifier established: the evidence is genuine and says this."""

    tee: str
    report: TdReport
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()
    platform: PlatformFlags = field(default_factory=PlatformFlags)
    #: the task code digest the evidence's claims carry, bound to the quote through REPORTDATA
    #: (None: no task claimed); ``PeerVerifier`` sets it, a bare quote carries none
    task: bytes | None = None
    #: the RTMR3 event log the claims carry, replayed to the quoted RTMR3 (None: no log)
    rtmr3_log: tuple[bytes, ...] | None = None


class Attester(abc.ABC):
    """Produces evidence inside a TD."""

    #: evidence kind, e.g. ``"tdx"`` or ``"simulated"``
    tee: str
    #: CBOR tag under which this evidence travels in an RA-TLS certificate
    evidence_tag: int

    @abc.abstractmethod
    def quote(self, report_data: bytes) -> bytes:
        """Return evidence binding exactly these 64 bytes of REPORTDATA."""

    @property
    def can_extend_rtmr3(self) -> bool:
        """True when ``extend_rtmr3`` can measure into this TD's RTMR3 (default: it cannot)."""
        return False

    def extend_rtmr3(self, digest: bytes) -> None:
        """Measure the 48-byte ``digest`` into RTMR3 by the rule of
        :func:`tdxfl.attestation.eventlog.plan_extension`, so that ``rtmr3_log`` accounts for it.
        The default, for attesters whose TD has no extensible RTMR3, only warns that it cannot."""
        log.warning(
            "%s evidence has no extensible RTMR3: digest %s is carried in the evidence claims only",
            self.tee,
            digest.hex(),
        )

    @property
    def rtmr3_log(self) -> tuple[bytes, ...] | None:
        """The events extended into RTMR3 since boot, in order, or None when this attester cannot
        account for RTMR3's value (default: None)."""
        return None


class Verifier(abc.ABC):
    """Checks evidence of one kind and returns what it proves."""

    tee: str
    evidence_tag: int

    @abc.abstractmethod
    def verify(self, quote: bytes) -> VerifiedEvidence:
        """Verify ``quote``; raise ``AttestationError`` with a clear reason when it is not genuine."""


def check_report_data(report_data: bytes) -> bytes:
    """Return ``report_data`` if it is exactly 64 bytes, else raise AttestationError."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise AttestationError(f"REPORTDATA must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    return bytes(report_data)
