"""Where DCAP collateral comes from: a JSON file, or a PCCS/PCS URL with an on-disk cache.

Collateral (TCB info, QE identity, CRLs and their issuer chains) is signed by Intel, and the
verifier checks those signatures, so the cache needs no integrity protection: a tampered
cache entry makes verification fail, it cannot make a bad quote pass. What the cache must get
right is freshness: an entry is only served while every part of it is still valid at the
verification time; otherwise it is fetched again, and expired fresh collateral is refused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import dcap_qvl
from cryptography import x509

from tdxfl.errors import AttestationError
from tdxfl.files import atomic_write

log = logging.getLogger(__name__)

#: fetches collateral for a quote from a PCCS/PCS base URL: ``fetch(url, quote)``
FetchFunction = Callable[[str, bytes], "dcap_qvl.QuoteCollateralV3"]


class CollateralSource(Protocol):
    """Anything that supplies the collateral to verify ``quote`` at unix time ``now``."""

    def collateral_for(self, quote: bytes, now: int) -> dcap_qvl.QuoteCollateralV3:
        """Return collateral for ``quote``; raise AttestationError when there is none."""
        ...


def load_collateral_json(text: str, origin: str = "collateral") -> dcap_qvl.QuoteCollateralV3:
    """Parse collateral JSON (the layout ``QuoteCollateralV3.from_json`` reads)."""
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(text)
    except (ValueError, TypeError) as e:
        raise AttestationError(f"{origin} is not valid DCAP collateral JSON: {e}") from e


def _iso_time(value: str) -> int:
    return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())


def collateral_expiry(collateral: dcap_qvl.QuoteCollateralV3) -> int:
    """Unix time at which the first part of ``collateral`` (TCB info, QE identity, a CRL) expires."""
    try:
        times = [
            _iso_time(json.loads(collateral.tcb_info)["nextUpdate"]),
            _iso_time(json.loads(collateral.qe_identity)["nextUpdate"]),
        ]
        for der in (collateral.root_ca_crl, collateral.pck_crl):
            next_update = x509.load_der_x509_crl(bytes(der)).next_update_utc
            if next_update is None:
                raise ValueError("CRL has no nextUpdate")
            times.append(int(next_update.timestamp()))
    except (ValueError, KeyError, TypeError) as e:
        raise AttestationError(f"cannot read the validity period of the collateral: {e}") from e
    return min(times)


class FileCollateral:
    """Collateral read once from a JSON file (e.g. exported with ``QuoteCollateralV3.to_json``).

    It is served as is: the verifier refuses it at times when it is expired.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._collateral: dcap_qvl.QuoteCollateralV3 | None = None

    def collateral_for(self, quote: bytes, now: int) -> dcap_qvl.QuoteCollateralV3:
        """The file's collateral (whatever the quote)."""
        if self._collateral is None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except OSError as e:
                raise AttestationError(f"cannot read collateral file {self.path}: {e}") from e
            self._collateral = load_collateral_json(text, f"collateral file {self.path}")
        return self._collateral


def fetch_collateral(url: str, quote: bytes) -> dcap_qvl.QuoteCollateralV3:
    """Fetch collateral for ``quote`` from a PCCS/PCS with ``dcap_qvl.get_collateral`` (blocking)."""

    def run() -> dcap_qvl.QuoteCollateralV3:
        return asyncio.run(dcap_qvl.get_collateral(url, quote))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # called from inside an event loop: asyncio.run needs a thread of its own
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tdxfl/collateral`` (``~/.cache/tdxfl/collateral``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tdxfl" / "collateral"


class PccsCollateral:
    """Collateral from a PCCS (or Intel PCS) URL, cached on disk per FMSPC and PCK CA type."""

    def __init__(
        self,
        url: str,
        cache_dir: str | os.PathLike[str] | None = None,
        fetch: FetchFunction | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._fetch = fetch or fetch_collateral

    def cache_path(self, quote: bytes) -> Path:
        """The cache file for ``quote``'s platform: ``<cache_dir>/<FMSPC>-<ca>.json``."""
        try:
            parsed = dcap_qvl.Quote.parse(quote)
            fmspc, ca = parsed.fmspc(), parsed.ca()
        except ValueError as e:
            raise AttestationError(f"cannot find the quote's FMSPC/PCK CA to fetch collateral: {e}") from e
        key = f"{fmspc}-{ca}"
        if not re.fullmatch(r"[0-9A-Za-z_-]+", key):
            raise AttestationError(f"unexpected FMSPC/CA {key!r} in quote")
        return self.cache_dir / f"{key}.json"

    def collateral_for(self, quote: bytes, now: int) -> dcap_qvl.QuoteCollateralV3:
        """Cached collateral if still valid at ``now``, else freshly fetched (and cached)."""
        path = self.cache_path(quote)
        cached = self._read_cache(path)
        if cached is not None and collateral_expiry(cached) > now:
            return cached
        try:
            fresh = self._fetch(self.url, quote)
        except Exception as e:  # network and PCCS errors come as several exception types
            stale = " (the cached copy has expired)" if cached is not None else ""
            raise AttestationError(f"cannot fetch collateral from {self.url}: {e}{stale}") from e
        expiry = collateral_expiry(fresh)
        if expiry <= now:
            raise AttestationError(
                f"collateral from {self.url} expired at "
                f"{dt.datetime.fromtimestamp(expiry, dt.UTC):%Y-%m-%d %H:%M:%S} UTC; refusing it"
            )
        self._write_cache(path, fresh)
        return fresh

    def _read_cache(self, path: Path) -> dcap_qvl.QuoteCollateralV3 | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("ignoring unreadable collateral cache %s: %s", path, e)
            return None
        try:
            collateral = load_collateral_json(text, f"cached collateral {path}")
            collateral_expiry(collateral)
        except AttestationError as e:
            log.warning("ignoring corrupt collateral cache entry: %s", e)
            return None
        return collateral

    def _write_cache(self, path: Path, collateral: dcap_qvl.QuoteCollateralV3) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                f.write(collateral.to_json().encode("utf-8"))
        except OSError as e:  # a cache that cannot be written costs a refetch, nothing more
            log.warning("cannot write collateral cache %s: %s", path, e)


class NoCollateral:
    """The source when none is configured: every TDX quote is refused, saying what to configure."""

    def __init__(self, hint: str = "configure a collateral file or a PCCS URL") -> None:
        self.hint = hint

    def collateral_for(self, quote: bytes, now: int) -> dcap_qvl.QuoteCollateralV3:
        """Always raises AttestationError."""
        raise AttestationError(f"no DCAP collateral to verify a TDX quote: {self.hint}")


def collateral_source(
    collateral_file: str | None = None,
    pccs_url: str | None = None,
    cache_dir: str | None = None,
    *,
    hint: str = "configure a collateral file or a PCCS URL",
) -> CollateralSource:
    """The source for these settings: the file if given, else the PCCS URL, else ``NoCollateral``."""
    if collateral_file:
        return FileCollateral(collateral_file)
    if pccs_url:
        return PccsCollateral(pccs_url, cache_dir or None)
    return NoCollateral(hint)
