"""Typed TD measurements and the parser for Intel TDX quotes (version 4 and 5).

The layout follows Intel's "TDX DCAP Quote Generation Library and Quote Verification Library"
reference: a 48-byte header, then the TD report body (TDX 1.0: 584 bytes; TDX 1.5: 648 bytes,
which appends TEE_TCB_SVN2 and MRSERVICETD), then a u32 signature-data length and the
signature data. Version 5 inserts a body-type u16 and body-size u32 after the header.

The parser only reads; it checks nothing cryptographic (that is the verifier's job). Bytes that
are not a well-formed TDX quote (truncated, wrong version or wrong TEE) raise
``tdxfl.errors.AttestationError``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from tdxfl.errors import AttestationError

HEADER_SIZE = 48
TDX_TEE_TYPE = 0x81
SGX_TEE_TYPE = 0x00
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
_V5_BODY_TYPE_TD10 = 2
_V5_BODY_TYPE_TD15 = 3


class TdAttribute(enum.IntFlag):
    """Named bits of the 64-bit TD_ATTRIBUTES field (Intel TDX module ABI)."""

    DEBUG = 1 << 0
    SEPT_VE_DISABLE = 1 << 28
    MIGRATABLE = 1 << 29
    PKS = 1 << 30
    KL = 1 << 31
    PERFMON = 1 << 63


@dataclass(frozen=True)
class TdReport:
    """The measured identity of a trust domain, as carried in the body of a TDX quote."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes

    @property
    def debug(self) -> bool:
        """True when the TD runs in DEBUG mode (its memory is readable by the host)."""
        return bool(self.td_attributes & TdAttribute.DEBUG)

    def attribute_names(self) -> list[str]:
        """Names of the set TD attribute bits that have a name."""
        return [a.name for a in TdAttribute if a.name and self.td_attributes & a]

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly view (hex strings)."""
        return {
            "mrtd": self.mrtd.hex(),
            "rtmr0": self.rtmrs[0].hex(),
            "rtmr1": self.rtmrs[1].hex(),
            "rtmr2": self.rtmrs[2].hex(),
            "rtmr3": self.rtmrs[3].hex(),
            "mrconfigid": self.mrconfigid.hex(),
            "mrowner": self.mrowner.hex(),
            "mrownerconfig": self.mrownerconfig.hex(),
            "td_attributes": struct.pack("<Q", self.td_attributes).hex(),
            "td_attribute_names": self.attribute_names(),
            "xfam": struct.pack("<Q", self.xfam).hex(),
            "tee_tcb_svn": self.tee_tcb_svn.hex(),
            "mr_seam": self.mr_seam.hex(),
            "report_data": self.report_data.hex(),
        }


@dataclass(frozen=True)
class ParsedQuote:
    """A TDX quote split into header fields, the TD report body and the signed length."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes
    report: TdReport
    signed_length: int
    signature_data: bytes


def parse_td_report(body: bytes) -> TdReport:
    """Parse a TD report body (TDX 1.0 layout; TDX 1.5 only appends fields)."""
    if len(body) < TD_REPORT10_SIZE:
        raise AttestationError(f"TD report body is {len(body)} bytes, at least {TD_REPORT10_SIZE} are required")

    def field(offset: int, size: int) -> bytes:
        return bytes(body[offset : offset + size])

    return TdReport(
        tee_tcb_svn=field(0, 16),
        mr_seam=field(16, 48),
        mr_signer_seam=field(64, 48),
        seam_attributes=field(112, 8),
        td_attributes=struct.unpack_from("<Q", body, 120)[0],
        xfam=struct.unpack_from("<Q", body, 128)[0],
        mrtd=field(136, 48),
        mrconfigid=field(184, 48),
        mrowner=field(232, 48),
        mrownerconfig=field(280, 48),
        rtmrs=(field(328, 48), field(376, 48), field(424, 48), field(472, 48)),
        report_data=field(520, 64),
    )


def parse_quote(quote: bytes) -> ParsedQuote:
    """Parse a TDX quote of version 4 or 5; trailing padding after the signature is ignored.

    Raises AttestationError with a clear message for truncated input, another TEE (SGX) or an
    unknown version.
    """
    if len(quote) < HEADER_SIZE:
        raise AttestationError(f"quote is {len(quote)} bytes, shorter than its {HEADER_SIZE}-byte header")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    if tee_type != TDX_TEE_TYPE:
        tee = "SGX" if tee_type == SGX_TEE_TYPE else f"0x{tee_type:x}"
        raise AttestationError(f"quote is for TEE type {tee}, not TDX (0x81)")
    if version == 4:
        body_offset, body_size = HEADER_SIZE, TD_REPORT10_SIZE
    elif version == 5:
        if len(quote) < HEADER_SIZE + 6:
            raise AttestationError("version 5 quote truncated before its body descriptor")
        body_type, body_size = struct.unpack_from("<HI", quote, HEADER_SIZE)
        if body_type == _V5_BODY_TYPE_TD10:
            expected = TD_REPORT10_SIZE
        elif body_type == _V5_BODY_TYPE_TD15:
            expected = TD_REPORT15_SIZE
        else:
            raise AttestationError(f"version 5 quote has body type {body_type}, not a TD report (2 or 3)")
        if body_size != expected:
            raise AttestationError(f"version 5 body type {body_type} must be {expected} bytes, says {body_size}")
        body_offset = HEADER_SIZE + 6
    else:
        raise AttestationError(f"unsupported quote version {version} (expected 4 or 5)")
    signed_length = body_offset + body_size
    if len(quote) < signed_length + 4:
        raise AttestationError(
            f"quote truncated: {len(quote)} bytes, its header and body alone need {signed_length + 4}"
        )
    (sig_len,) = struct.unpack_from("<I", quote, signed_length)
    sig_end = signed_length + 4 + sig_len
    if len(quote) < sig_end:
        raise AttestationError(
            f"quote truncated: signature data says {sig_len} bytes, only {len(quote) - signed_length - 4} present"
        )
    return ParsedQuote(
        version=version,
        attestation_key_type=key_type,
        tee_type=tee_type,
        qe_vendor_id=bytes(quote[12:28]),
        user_data=bytes(quote[28:48]),
        report=parse_td_report(quote[body_offset:signed_length]),
        signed_length=signed_length,
        signature_data=bytes(quote[signed_length + 4 : sig_end]),
    )
