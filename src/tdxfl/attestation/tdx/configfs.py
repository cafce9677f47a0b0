"""Intel TDX quote generation through the Linux configfs-tsm report interface.

Inside a TD running Linux >= 6.7 with the TDX guest driver, ``/sys/kernel/config/tsm/report``
makes quotes: create an entry directory, write 64 bytes of REPORTDATA to its ``inblob``, read
the quote from ``outblob``. Its ``generation`` counter increments on every write to the entry,
so reading it before the write and after the read detects a concurrent writer to the same
entry (the quote could then be for someone else's REPORTDATA); tdxfl uses a fresh uniquely
named entry per quote, checks the counter, and also checks the quote's REPORTDATA.

The attester also measures into RTMR3 (``extend_rtmr3``) through the TDX guest driver's sysfs
file (:mod:`tdxfl.attestation.tdx.rtmr`, Linux >= 6.16) and reports the event log it keeps.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path

from tdxfl.attestation.evidence import TDX_EVIDENCE_TAG
from tdxfl.attestation.interfaces import Attester, check_report_data
from tdxfl.attestation.report import parse_quote
from tdxfl.attestation.tdx.rtmr import DEFAULT_RTMR3_PATH, SysfsRtmr3
from tdxfl.errors import AttestationError

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
TDX_PROVIDER = "tdx_guest"
_MISSING_HINT = (
    "no TDX quote can be made. Either this machine is not an Intel TDX trust domain, the "
    "kernel is too old (needs Linux >= 6.7 with the TDX guest driver, CONFIG_TDX_GUEST_DRIVER / "
    "module tdx_guest), or configfs is not mounted (run: mount -t configfs none /sys/kernel/config)"
)


class _GenerationRace(Exception):
    """Another writer touched our entry between our write and our read."""


class TdxAttester(Attester):
    """Makes Intel TDX quotes with configfs-tsm (``root`` is the ``tsm/report`` directory) and
    extends RTMR3 through the sysfs file ``rtmr3_path``."""

    tee = "tdx"
    evidence_tag = TDX_EVIDENCE_TAG

    def __init__(
        self,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        attempts: int = 3,
        rtmr3_path: str | os.PathLike[str] = DEFAULT_RTMR3_PATH,
    ) -> None:
        self.root = Path(root)
        self.attempts = max(1, attempts)
        self.rtmr3 = SysfsRtmr3(rtmr3_path)

    @property
    def can_extend_rtmr3(self) -> bool:
        """True when the kernel exposes RTMR3 for extension (Linux >= 6.16)."""
        return self.rtmr3.available

    def extend_rtmr3(self, digest: bytes) -> None:
        """Measure ``digest`` into RTMR3 through sysfs (:meth:`SysfsRtmr3.extend`)."""
        self.rtmr3.extend(digest)

    @property
    def rtmr3_log(self) -> tuple[bytes, ...] | None:
        """The RTMR3 events since boot that this attester accounts for (None: none known)."""
        return self.rtmr3.log

    def quote(self, report_data: bytes) -> bytes:
        """A TDX quote whose REPORTDATA is exactly ``report_data`` (64 bytes)."""
        report_data = check_report_data(report_data)
        if not self.root.is_dir():
            raise AttestationError(f"configfs-tsm report interface {self.root} not found: {_MISSING_HINT}")
        for attempt in range(1, self.attempts + 1):
            try:
                return self._quote_once(report_data)
            except _GenerationRace as e:
                log.warning("configfs-tsm generation race (attempt %d/%d): %s", attempt, self.attempts, e)
        raise AttestationError(
            f"configfs-tsm quote generation raced with another writer {self.attempts} times; giving up"
        )

    def _quote_once(self, report_data: bytes) -> bytes:
        entry = self.root / f"tdxfl-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._mkdir(entry)
        except PermissionError as e:
            raise AttestationError(f"no permission to create {entry}: quote generation needs root ({e})") from e
        except OSError as e:
            hint = " (no TSM provider registered: is the tdx_guest driver loaded?)" if e.errno == errno.ENXIO else ""
            raise AttestationError(f"cannot create configfs-tsm entry {entry}: {e}{hint}") from e
        try:
            provider = self._read(entry / "provider").decode(errors="replace").strip()
            if provider != TDX_PROVIDER:
                raise AttestationError(
                    f"configfs-tsm provider is {provider!r}, not {TDX_PROVIDER!r}: this is not an "
                    "Intel TDX trust domain (another confidential-computing technology is active)"
                )
            before = self._generation(entry)
            self._write(entry / "inblob", report_data)
            try:
                quote = self._read(entry / "outblob")
            except OSError as e:
                hint = ""
                if e.errno in (errno.EIO, errno.EBUSY, errno.ETIMEDOUT, errno.EINVAL):
                    hint = " (is the host's quote generation service running and reachable from the TD?)"
                raise AttestationError(f"TDX quote generation failed reading {entry / 'outblob'}: {e}{hint}") from e
            after = self._generation(entry)
            if after != before + 1:
                raise _GenerationRace(f"generation went from {before} to {after}, expected {before + 1}")
        except OSError as e:
            raise AttestationError(f"configfs-tsm entry {entry} unusable: {e}") from e
        finally:
            try:
                self._rmdir(entry)
            except OSError as e:
                log.warning("could not remove configfs-tsm entry %s: %s", entry, e)
        try:
            parsed = parse_quote(quote)
        except AttestationError as e:
            raise AttestationError(f"configfs-tsm returned something that is not a TDX quote: {e}") from e
        if parsed.report.report_data != report_data:
            raise _GenerationRace("the quote's REPORTDATA is not ours")
        return quote

    def _generation(self, entry: Path) -> int:
        raw = self._read(entry / "generation").decode(errors="replace").strip()
        try:
            return int(raw)
        except ValueError as e:
            raise AttestationError(f"configfs-tsm generation of {entry} is not a number: {raw!r}") from e

    # Filesystem primitives, one place each (configfs semantics are the kernel's).
    def _mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def _rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def _write(self, path: Path, data: bytes) -> None:
        with open(path, "wb", buffering=0) as f:
            f.write(data)
