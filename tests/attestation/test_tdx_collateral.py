"""Collateral sources: JSON files, and a PCCS URL with an on-disk cache (fetch monkeypatched)."""

from __future__ import annotations

import json
from pathlib import Path

import dcap_qvl
import pytest

from tdxfl.attestation.tdx import collateral as coll
from tdxfl.attestation.tdx.collateral import FileCollateral, PccsCollateral, collateral_expiry
from tdxfl.attestation.tdx.dcap import TdxVerifier
from tdxfl.errors import AttestationError

URL = "https://pccs.example/"
#: the PCK CRL's nextUpdate (2025-07-19 10:00:35 UTC) is the first expiry in the sample
SAMPLE_EXPIRY = 1752919235


@pytest.fixture
def sample_collateral(tdx_collateral_path: Path) -> dcap_qvl.QuoteCollateralV3:
    return dcap_qvl.QuoteCollateralV3.from_json(tdx_collateral_path.read_text())


class CountingFetch:
    def __init__(self, collateral: dcap_qvl.QuoteCollateralV3 | None, error: Exception | None = None) -> None:
        self.collateral, self.error, self.calls = collateral, error, []  # type: ignore[var-annotated]

    def __call__(self, url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
        self.calls.append(url)
        if self.error is not None:
            raise self.error
        assert self.collateral is not None
        return self.collateral


def test_expiry_is_earliest_part(sample_collateral: dcap_qvl.QuoteCollateralV3) -> None:
    assert collateral_expiry(sample_collateral) == SAMPLE_EXPIRY


def test_file_source(tdx_collateral_path: Path, tdx_quote: bytes, sample_time: int) -> None:
    source = FileCollateral(tdx_collateral_path)
    c = source.collateral_for(tdx_quote, sample_time)
    assert json.loads(c.tcb_info)["fmspc"] == "B0C06F000000"
    assert source.collateral_for(tdx_quote, 0) is c  # read once


def test_file_source_errors(tmp_path: Path, tdx_quote: bytes) -> None:
    with pytest.raises(AttestationError, match="cannot read collateral file"):
        FileCollateral(tmp_path / "missing.json").collateral_for(tdx_quote, 0)
    bad = tmp_path / "bad.json"
    bad.write_text('{"tcb_info": 1}')
    with pytest.raises(AttestationError, match="not valid DCAP collateral JSON"):
        FileCollateral(bad).collateral_for(tdx_quote, 0)


def test_pccs_fetches_then_serves_from_cache(
    tmp_path: Path, tdx_quote: bytes, sample_time: int, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    fetch = CountingFetch(sample_collateral)
    source = PccsCollateral(URL, tmp_path / "cache", fetch=fetch)
    path = source.cache_path(tdx_quote)
    assert path == tmp_path / "cache" / "B0C06F000000-platform.json"
    first = source.collateral_for(tdx_quote, sample_time)
    assert fetch.calls == ["https://pccs.example"] and path.is_file()
    again = PccsCollateral(URL, tmp_path / "cache", fetch=fetch).collateral_for(tdx_quote, sample_time)
    assert len(fetch.calls) == 1  # second source instance read the disk cache
    assert again.tcb_info == first.tcb_info
    verified = TdxVerifier(PccsCollateral(URL, tmp_path / "cache", fetch=fetch), as_of=sample_time).verify(tdx_quote)
    assert verified.tcb_status == "UpToDate" and len(fetch.calls) == 1


def test_expired_cache_is_refreshed(
    tmp_path: Path, tdx_quote: bytes, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    fetch = CountingFetch(sample_collateral)
    source = PccsCollateral(URL, tmp_path, fetch=fetch)
    source.collateral_for(tdx_quote, SAMPLE_EXPIRY - 10)
    # past the expiry the cache is not served; the refetched copy is expired too: refused
    with pytest.raises(AttestationError, match="expired at 2025-07-19 10:00:35 UTC; refusing it"):
        source.collateral_for(tdx_quote, SAMPLE_EXPIRY)
    assert len(fetch.calls) == 2


def test_expired_cache_and_fetch_failure_refused(
    tmp_path: Path, tdx_quote: bytes, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    PccsCollateral(URL, tmp_path, fetch=CountingFetch(sample_collateral)).collateral_for(tdx_quote, SAMPLE_EXPIRY - 10)
    failing = PccsCollateral(URL, tmp_path, fetch=CountingFetch(None, RuntimeError("connection refused")))
    with pytest.raises(AttestationError, match="connection refused \\(the cached copy has expired\\)"):
        failing.collateral_for(tdx_quote, SAMPLE_EXPIRY + 1)


def test_corrupt_cache_is_refetched(
    tmp_path: Path, tdx_quote: bytes, sample_time: int, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    fetch = CountingFetch(sample_collateral)
    source = PccsCollateral(URL, tmp_path, fetch=fetch)
    source.cache_path(tdx_quote).write_text("not json")
    source.collateral_for(tdx_quote, sample_time)
    assert len(fetch.calls) == 1
    assert json.loads(source.cache_path(tdx_quote).read_text())["tcb_info"] == sample_collateral.tcb_info


def test_tampered_cache_fails_verification(
    tmp_path: Path, tdx_quote: bytes, sample_time: int, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    source = PccsCollateral(URL, tmp_path, fetch=CountingFetch(sample_collateral))
    source.collateral_for(tdx_quote, sample_time)
    path = source.cache_path(tdx_quote)
    data = json.loads(path.read_text())
    tampered = data["qe_identity"].replace('"isvprodid":2', '"isvprodid":3')
    assert tampered != data["qe_identity"]
    data["qe_identity"] = tampered
    path.write_text(json.dumps(data))
    with pytest.raises(AttestationError, match="(?i)signature"):
        TdxVerifier(source, as_of=sample_time).verify(tdx_quote)


def test_default_fetch_uses_dcap_qvl(
    monkeypatch: pytest.MonkeyPatch, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    calls = []

    async def fake_get_collateral(url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
        calls.append((url, quote))
        return sample_collateral

    monkeypatch.setattr(coll.dcap_qvl, "get_collateral", fake_get_collateral)
    assert coll.fetch_collateral("https://x", b"q") is sample_collateral
    assert calls == [("https://x", b"q")]


def test_default_fetch_inside_event_loop(
    monkeypatch: pytest.MonkeyPatch, sample_collateral: dcap_qvl.QuoteCollateralV3
) -> None:
    import asyncio

    async def fake_get_collateral(url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
        return sample_collateral

    monkeypatch.setattr(coll.dcap_qvl, "get_collateral", fake_get_collateral)

    async def main() -> dcap_qvl.QuoteCollateralV3:
        return coll.fetch_collateral("https://x", b"q")

    assert asyncio.run(main()) is sample_collateral


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert PccsCollateral(URL).cache_dir == tmp_path / "tdxfl" / "collateral"


def test_cache_path_needs_a_quote(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="FMSPC"):
        PccsCollateral(URL, tmp_path).cache_path(b"garbage")


def test_collateral_source_factory(tmp_path: Path, tdx_collateral_path: Path, tdx_quote: bytes) -> None:
    assert isinstance(coll.collateral_source(str(tdx_collateral_path), URL), FileCollateral)
    pccs = coll.collateral_source("", URL, str(tmp_path))
    assert isinstance(pccs, PccsCollateral) and pccs.cache_dir == tmp_path
    with pytest.raises(AttestationError, match="no DCAP collateral to verify a TDX quote: configure"):
        coll.collateral_source().collateral_for(tdx_quote, 0)
