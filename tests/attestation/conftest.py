"""Shared fixtures for the attestation tests: the real Intel-signed TDX/SGX samples.

The samples ship in ``tests/data/tdx`` (``TDXFL_TESTDATA`` may point at another copy's parent
folder). They are required: a missing sample is a test failure, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTDATA = Path(os.environ.get("TDXFL_TESTDATA", REPO / "tests" / "data"))
TDX_DIR = TESTDATA / "tdx"
#: 2025-07-19 10:00:34 UTC: the samples' collateral is valid at this time
SAMPLE_TIME = 1752919234
SAMPLE_MRTD = bytes.fromhex(
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
)


@pytest.fixture(scope="session")
def tdx_dir() -> Path:
    """Folder with tdx_quote, sgx_quote and their collateral JSON."""
    if not (TDX_DIR / "tdx_quote").is_file():
        pytest.fail(f"TDX sample data not found in {TDX_DIR} (set TDXFL_TESTDATA)")
    return TDX_DIR


@pytest.fixture(scope="session")
def tdx_quote(tdx_dir: Path) -> bytes:
    """The real TDX v4 quote."""
    return (tdx_dir / "tdx_quote").read_bytes()


@pytest.fixture(scope="session")
def sgx_quote(tdx_dir: Path) -> bytes:
    """The real SGX v3 quote."""
    return (tdx_dir / "sgx_quote").read_bytes()


@pytest.fixture(scope="session")
def tdx_collateral_path(tdx_dir: Path) -> Path:
    """The TDX quote's collateral JSON file."""
    return tdx_dir / "tdx_quote_collateral.json"


class _FakeKernelMixin:
    """Emulates the kernel side of configfs-tsm on plain files in a temp folder.

    ``mkdir`` populates the entry's attributes, writing ``inblob`` bumps ``generation`` (by
    ``bump``; the first ``races`` writes bump it twice, as a concurrent writer would) and fills
    ``outblob`` with the sample quote carrying the written REPORTDATA; ``rmdir`` removes it all.
    """

    provider = b"tdx_guest\n"
    bump = 1
    races = 0
    base_quote = b""
    created: list[Path]

    def _mkdir(self, path: Path) -> None:
        os.mkdir(path)
        self.created.append(path)
        (path / "provider").write_bytes(self.provider)
        (path / "generation").write_bytes(b"0\n")
        for name in ("inblob", "outblob", "auxblob", "privlevel_floor"):
            (path / name).write_bytes(b"")

    def _write(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        if path.name == "inblob":
            gen = int((path.parent / "generation").read_text())
            step = self.bump + (1 if self.races > 0 else 0)
            self.races -= 1
            (path.parent / "generation").write_text(f"{gen + step}\n")
            quote = bytearray(self.base_quote)
            quote[48 + 520 : 48 + 584] = data
            (path.parent / "outblob").write_bytes(bytes(quote))

    def _rmdir(self, path: Path) -> None:
        import shutil

        shutil.rmtree(path)


@pytest.fixture
def fake_configfs(tmp_path: Path, tdx_quote: bytes):  # type: ignore[no-untyped-def]
    """A factory ``make(**overrides) -> TdxAttester`` over a fake configfs tree in tmp_path."""
    from tdxfl.attestation.tdx.configfs import TdxAttester

    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)

    def make(**overrides: object) -> TdxAttester:
        cls = type("FakeTdxAttester", (_FakeKernelMixin, TdxAttester), {"base_quote": tdx_quote, **overrides})
        attester = cls(root)
        attester.created = []
        return attester

    make.root = root  # type: ignore[attr-defined]
    return make


@pytest.fixture(scope="session")
def sample_time() -> int:
    """A unix time at which the samples' collateral is valid."""
    return SAMPLE_TIME


@pytest.fixture(scope="session")
def sample_mrtd() -> bytes:
    """The TDX sample quote's MRTD."""
    return SAMPLE_MRTD
