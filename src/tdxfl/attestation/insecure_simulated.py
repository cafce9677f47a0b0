"""Simulated TD evidence, for machines without TDX. It protects nothing against a hostile host.

A simulated quote has the exact byte layout of a TDX v4 quote (header + TD report body) so the
same parser and the same policy apply, followed by an Ed25519 signature made with a key derived
from a *public* constant. Anyone can forge it: it exists to exercise the protocol, never as a
trust anchor. It travels under its own CBOR tag, so a policy that requires ``tdx`` refuses it
before anything else is looked at, and a TDX verifier never accepts it.

The simulated TD models RTMR3 extension in memory (``extend_rtmr3``), by the same rule and with
the same event log as a real TD, so the verifier's replay runs end to end without TDX.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass, field, replace
from importlib import resources

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tdxfl.attestation.eventlog import plan_extension
from tdxfl.attestation.evidence import SIMULATED_EVIDENCE_TAG
from tdxfl.attestation.interfaces import Attester, VerifiedEvidence, Verifier, check_report_data
from tdxfl.attestation.report import HEADER_SIZE, TD_REPORT10_SIZE, TDX_TEE_TYPE, TdAttribute, parse_quote
from tdxfl.errors import AttestationError

log = logging.getLogger(__name__)

SIMULATED_QE_VENDOR_ID = b"tdxfl-SIMULATED!"
_SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"tdxfl simulated quoting enclave (public!)").digest()
)
_SIGNATURE_SIZE = 64
WARNING = (
    "SIMULATED TD: this party's attestation evidence is software-made and forgeable; it proves "
    "nothing about the host. Use only for development and tests; real-TDX policies refuse it."
)


def code_measurement() -> bytes:
    """SHA-384 over the installed tdxfl sources: the default simulated MRTD ("what code runs")."""
    h = hashlib.sha384()
    root = resources.files("tdxfl")
    stack = [root]
    files = []
    while stack:
        node = stack.pop()
        for child in node.iterdir():
            if child.is_dir():
                if child.name != "__pycache__":
                    stack.append(child)
            elif child.name.endswith((".py", ".proto")):
                files.append(child)
    base = str(root)
    for f in sorted(files, key=lambda p: str(p)):
        h.update(str(f)[len(base) :].encode())
        h.update(f.read_bytes())
    return h.digest()


@dataclass(frozen=True)
class SimulatedTd:
    """The identity a simulated TD claims: its measurements and attributes."""

    mrtd: bytes = field(default_factory=code_measurement)
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4
    mrconfigid: bytes = bytes(48)
    mrowner: bytes = bytes(48)
    debug: bool = False

    def __post_init__(self) -> None:
        for name, value in (("mrtd", self.mrtd), ("mrconfigid", self.mrconfigid), ("mrowner", self.mrowner)):
            if len(value) != 48:
                raise ValueError(f"simulated {name} must be 48 bytes, got {len(value)}")
        if len(self.rtmrs) != 4 or any(len(r) != 48 for r in self.rtmrs):
            raise ValueError("simulated RTMRs must be four 48-byte values")


class SimulatedAttester(Attester):
    """Makes simulated evidence for a ``SimulatedTd``; logs a loud warning once."""

    tee = "simulated"
    evidence_tag = SIMULATED_EVIDENCE_TAG

    def __init__(self, td: SimulatedTd | None = None) -> None:
        self.td = td or SimulatedTd()
        self._rtmr3_log: tuple[bytes, ...] | None = None
        log.warning(WARNING)

    @property
    def can_extend_rtmr3(self) -> bool:
        """Always: the simulated RTMR3 lives in this object."""
        return True

    def extend_rtmr3(self, digest: bytes) -> None:
        """Measure ``digest`` into the simulated RTMR3 by the rule of a real TD
        (:func:`tdxfl.attestation.eventlog.plan_extension`); later quotes report the result."""
        plan = plan_extension(self.td.rtmrs[3], digest)
        if plan.log is None:
            log.warning(
                "simulated RTMR3 starts at %s, not zero: not extending it, and carrying no RTMR3 event log",
                plan.result.hex(),
            )
        rtmrs = self.td.rtmrs
        self.td = replace(self.td, rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], plan.result))
        self._rtmr3_log = plan.log

    @property
    def rtmr3_log(self) -> tuple[bytes, ...] | None:
        """The events extended into the simulated RTMR3 (None before any, or when it started
        at a value other than zero)."""
        return self._rtmr3_log

    def quote(self, report_data: bytes) -> bytes:
        """A TDX-v4-shaped quote over ``report_data``, signed by the public simulation key."""
        report_data = check_report_data(report_data)
        header = struct.pack("<HHI", 4, 2, TDX_TEE_TYPE) + bytes(4) + SIMULATED_QE_VENDOR_ID + bytes(20)
        attributes = int(TdAttribute.SEPT_VE_DISABLE) | (int(TdAttribute.DEBUG) if self.td.debug else 0)
        body = bytearray(TD_REPORT10_SIZE)
        struct.pack_into("<Q", body, 120, attributes)
        body[136:184] = self.td.mrtd
        body[184:232] = self.td.mrconfigid
        body[232:280] = self.td.mrowner
        for i, rtmr in enumerate(self.td.rtmrs):
            body[328 + 48 * i : 376 + 48 * i] = rtmr
        body[520:584] = report_data
        signed = header + bytes(body)
        signature = _SIGNING_KEY.sign(signed)
        return signed + struct.pack("<I", len(signature)) + signature


class SimulatedVerifier(Verifier):
    """Checks a simulated quote's layout and signature (catches corruption, not forgery)."""

    tee = "simulated"
    evidence_tag = SIMULATED_EVIDENCE_TAG

    def verify(self, quote: bytes) -> VerifiedEvidence:
        """Return the simulated TD's report; raise AttestationError if malformed or corrupted."""
        try:
            parsed = parse_quote(quote)
        except AttestationError as e:
            raise AttestationError(f"simulated quote malformed: {e}") from e
        if parsed.qe_vendor_id != SIMULATED_QE_VENDOR_ID or len(parsed.signature_data) != _SIGNATURE_SIZE:
            raise AttestationError("not a simulated quote (QE vendor id or signature size differs)")
        try:
            _SIGNING_KEY.public_key().verify(parsed.signature_data, quote[: parsed.signed_length])
        except InvalidSignature as e:
            raise AttestationError("simulated quote signature invalid (corrupted evidence)") from e
        assert parsed.signed_length == HEADER_SIZE + TD_REPORT10_SIZE
        return VerifiedEvidence(tee=self.tee, report=parsed.report, tcb_status="UpToDate")
