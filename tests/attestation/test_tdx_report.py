"""Parsing real TDX quotes: v4 as sampled, v5 built from it, and truncated input."""

from __future__ import annotations

import struct

import pytest

from tdxfl.attestation.report import TD_REPORT10_SIZE, TdAttribute, parse_quote
from tdxfl.errors import AttestationError

V4_BODY = slice(48, 48 + TD_REPORT10_SIZE)


def _v5(v4: bytes, body_type: int = 2, extra: bytes = b"") -> bytes:
    """A v5 quote carrying the v4 sample's body (type 2 = TDX 1.0, 3 = TDX 1.5 with ``extra``)."""
    header = struct.pack("<H", 5) + v4[2:48]
    body = v4[V4_BODY] + extra
    rest = v4[48 + TD_REPORT10_SIZE :]
    return header + struct.pack("<HI", body_type, len(body)) + body + rest


def test_v4_sample_fields(tdx_quote: bytes, sample_mrtd: bytes) -> None:
    parsed = parse_quote(tdx_quote)
    assert parsed.version == 4
    assert parsed.tee_type == 0x81
    assert parsed.report.mrtd == sample_mrtd
    assert parsed.report.td_attributes.to_bytes(8, "little").hex() == "0000001000000000"
    assert parsed.report.attribute_names() == ["SEPT_VE_DISABLE"]
    assert not parsed.report.debug
    assert parsed.signed_length == 48 + TD_REPORT10_SIZE
    assert 48 + TD_REPORT10_SIZE + 4 + len(parsed.signature_data) == 4936  # the rest is padding
    assert parsed.report.rtmrs[0].hex().startswith("44c0197b39157fdd")


@pytest.mark.parametrize("body_type,extra", [(2, b""), (3, bytes(range(64)))])
def test_v5_from_v4_body(tdx_quote: bytes, body_type: int, extra: bytes) -> None:
    v4 = parse_quote(tdx_quote)
    v5 = parse_quote(_v5(tdx_quote, body_type, extra))
    assert v5.version == 5
    assert v5.report == v4.report
    assert v5.signature_data == v4.signature_data
    assert v5.signed_length == 54 + TD_REPORT10_SIZE + len(extra)


def test_v5_bad_body_descriptor(tdx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="body type 9"):
        parse_quote(_v5(tdx_quote, body_type=9))
    q = bytearray(_v5(tdx_quote))
    struct.pack_into("<I", q, 50, 600)
    with pytest.raises(AttestationError, match="must be 584 bytes"):
        parse_quote(bytes(q))


@pytest.mark.parametrize(
    "length,match",
    [
        (0, "shorter than its 48-byte header"),
        (47, "header"),
        (48 + 100, "truncated"),
        (48 + 584 + 4 + 100, "signature data says"),
    ],
)
def test_truncated_quotes(tdx_quote: bytes, length: int, match: str) -> None:
    with pytest.raises(AttestationError, match=match):
        parse_quote(tdx_quote[:length])


def test_truncated_v5(tdx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="body descriptor"):
        parse_quote(_v5(tdx_quote)[:50])


def test_sgx_and_unknown_version(tdx_quote: bytes, sgx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="SGX"):
        parse_quote(sgx_quote)
    with pytest.raises(AttestationError, match="version 7"):
        parse_quote(struct.pack("<H", 7) + tdx_quote[2:])


def test_debug_attribute_named(tdx_quote: bytes) -> None:
    q = bytearray(tdx_quote)
    q[48 + 120] |= int(TdAttribute.DEBUG)
    report = parse_quote(bytes(q)).report
    assert report.debug and "DEBUG" in report.attribute_names()
