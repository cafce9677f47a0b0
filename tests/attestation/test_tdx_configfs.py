"""The configfs-tsm attester against a fake configfs tree (kernel behaviour emulated on files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tdxfl.attestation.evidence import TDX_EVIDENCE_TAG
from tdxfl.attestation.report import parse_quote
from tdxfl.attestation.tdx.configfs import DEFAULT_ROOT, TdxAttester
from tdxfl.errors import AttestationError

REPORT_DATA = bytes(range(64))


def test_quote_via_configfs(fake_configfs: Any) -> None:
    attester = fake_configfs()
    assert (attester.tee, attester.evidence_tag) == ("tdx", TDX_EVIDENCE_TAG)
    quote = attester.quote(REPORT_DATA)
    assert parse_quote(quote).report.report_data == REPORT_DATA
    (entry,) = attester.created
    assert entry.parent == fake_configfs.root and entry.name.startswith("tdxfl-")
    assert (entry.parent / entry.name / "inblob").exists() is False  # entry removed afterwards
    assert list(fake_configfs.root.iterdir()) == []


def test_unique_entry_per_quote(fake_configfs: Any) -> None:
    attester = fake_configfs()
    attester.quote(REPORT_DATA)
    attester.quote(REPORT_DATA)
    assert len(set(attester.created)) == 2


def test_report_data_must_be_64_bytes(fake_configfs: Any) -> None:
    with pytest.raises(AttestationError, match="64 bytes, got 32"):
        fake_configfs().quote(bytes(32))


def test_provider_mismatch(fake_configfs: Any) -> None:
    attester = fake_configfs(provider=b"sev_guest\n")
    with pytest.raises(AttestationError, match="provider is 'sev_guest', not 'tdx_guest'"):
        attester.quote(REPORT_DATA)
    assert list(fake_configfs.root.iterdir()) == []


def test_missing_interface(tmp_path: Path) -> None:
    with pytest.raises(AttestationError) as err:
        TdxAttester(tmp_path / "no" / "tsm" / "report").quote(REPORT_DATA)
    message = str(err.value)
    for hint in ("not an Intel TDX trust domain", "Linux >= 6.7", "mount -t configfs none /sys/kernel/config"):
        assert hint in message


def test_default_root() -> None:
    assert TdxAttester().root == DEFAULT_ROOT == Path("/sys/kernel/config/tsm/report")


def test_generation_race_retried(fake_configfs: Any) -> None:
    attester = fake_configfs(races=1)
    assert parse_quote(attester.quote(REPORT_DATA)).report.report_data == REPORT_DATA
    assert len(attester.created) == 2
    assert list(fake_configfs.root.iterdir()) == []


def test_generation_race_gives_up(fake_configfs: Any) -> None:
    attester = fake_configfs(races=100)
    with pytest.raises(AttestationError, match="raced with another writer 3 times"):
        attester.quote(REPORT_DATA)
    assert len(attester.created) == 3
    assert list(fake_configfs.root.iterdir()) == []


def test_foreign_report_data_is_a_race(fake_configfs: Any, tdx_quote: bytes) -> None:
    class Stale:
        def _write(self, path: Path, data: bytes) -> None:
            super()._write(path, data)  # type: ignore[misc]
            if path.name == "inblob":
                (path.parent / "outblob").write_bytes(tdx_quote)  # someone else's REPORTDATA

    attester = fake_configfs()
    attester.__class__ = type("StaleAttester", (Stale, attester.__class__), {})
    with pytest.raises(AttestationError, match="raced"):
        attester.quote(REPORT_DATA)


def test_outblob_not_a_quote(fake_configfs: Any) -> None:
    attester = fake_configfs(base_quote=b"\x00" * 700)
    with pytest.raises(AttestationError, match="not a TDX quote"):
        attester.quote(REPORT_DATA)


def test_outblob_read_error_has_hint(fake_configfs: Any) -> None:
    class Failing:
        def _read(self, path: Path) -> bytes:
            if path.name == "outblob":
                raise OSError(5, "Input/output error")
            return super()._read(path)  # type: ignore[misc, no-any-return]

    attester = fake_configfs()
    attester.__class__ = type("FailingAttester", (Failing, attester.__class__), {})
    with pytest.raises(AttestationError, match="quote generation service"):
        attester.quote(REPORT_DATA)
    assert list(fake_configfs.root.iterdir()) == []


def test_mkdir_permission_denied(fake_configfs: Any) -> None:
    class Denied:
        def _mkdir(self, path: Path) -> None:
            raise PermissionError(13, "Permission denied")

    attester = fake_configfs()
    attester.__class__ = type("DeniedAttester", (Denied, attester.__class__), {})
    with pytest.raises(AttestationError, match="needs root"):
        attester.quote(REPORT_DATA)
