"""RTMR3 of a real TD through the Linux (>= 6.16) TDX guest driver's measurement files in sysfs.

``/sys/class/misc/tdx_guest/measurements/rtmr3:sha384`` reads as RTMR3's current 48 bytes; a
48-byte write extends RTMR3 with it (TDG.MR.RTMR.EXTEND). ``SysfsRtmr3.extend`` applies
:func:`tdxfl.attestation.eventlog.plan_extension` to it and keeps the resulting event log. On
older kernels the file does not exist: it says so once (a warning) and keeps no log, and the task
digest then travels in the evidence claims alone.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from tdxfl.attestation.eventlog import RTMR_SIZE, plan_extension
from tdxfl.errors import AttestationError

__all__ = ["DEFAULT_RTMR3_PATH", "SysfsRtmr3"]

log = logging.getLogger(__name__)

DEFAULT_RTMR3_PATH = Path("/sys/class/misc/tdx_guest/measurements/rtmr3:sha384")


class SysfsRtmr3:
    """RTMR3 behind the sysfs file ``path``, and the events tdxfl can account for."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_RTMR3_PATH) -> None:
        self.path = Path(path)
        self.log: tuple[bytes, ...] | None = None
        self._warned = False

    @property
    def available(self) -> bool:
        """True when the kernel exposes RTMR3 at ``path``."""
        return self.path.exists()

    def read(self) -> bytes:
        """RTMR3's current value; AttestationError when it cannot be read or is not 48 bytes."""
        try:
            value = self._read()
        except OSError as e:
            raise AttestationError(f"cannot read RTMR3 from {self.path}: {e}") from e
        if len(value) != RTMR_SIZE:
            raise AttestationError(f"{self.path} holds {len(value)} bytes, not a {RTMR_SIZE}-byte RTMR")
        return value

    def extend(self, digest: bytes) -> None:
        """Measure ``digest`` into RTMR3 (extending it only where ``plan_extension`` says so) and
        keep the event log; without the sysfs file, warn once and keep none.

        Raises AttestationError when the file cannot be read or written, or the write did not
        extend RTMR3 as it must.
        """
        if not self.available:
            if not self._warned:
                log.warning(
                    "RTMR3 is not extensible here (%s does not exist: needs Linux >= 6.16 with the TDX guest "
                    "driver): the task digest is carried in the evidence claims only, without an RTMR3 event log",
                    self.path,
                )
                self._warned = True
            return
        plan = plan_extension(self.read(), digest)
        if plan.write:
            try:
                self._write(digest)
            except OSError as e:
                raise AttestationError(f"cannot extend RTMR3 through {self.path}: {e}") from e
            now = self.read()
            if not hmac.compare_digest(now, plan.result):
                raise AttestationError(
                    f"extending RTMR3 through {self.path} gave {now.hex()}, expected {plan.result.hex()} "
                    "(the write did not extend it, or another writer extended it at the same time)"
                )
            log.info("extended RTMR3 with task digest %s", digest.hex())
        elif plan.log is None:
            log.warning(
                "RTMR3 already holds %s, extended since boot by other software whose events tdxfl does not "
                "know: not extending it, and carrying no RTMR3 event log (the task digest is in the claims only)",
                plan.result.hex(),
            )
        else:
            log.info("RTMR3 already holds task digest %s (measured by an earlier start in this boot)", digest.hex())
        self.log = plan.log

    # Filesystem primitives, one place each (the measurement file's semantics are the kernel's).
    def _read(self) -> bytes:
        return self.path.read_bytes()

    def _write(self, digest: bytes) -> None:
        with open(self.path, "wb", buffering=0) as f:
            written = f.write(digest)
        if written != len(digest):
            raise OSError(f"short write: {written} of {len(digest)} bytes")
