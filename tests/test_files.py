"""``tdxfl.files.atomic_write``: all or nothing, private, durable, and no temporary file left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tdxfl import files
from tdxfl.files import atomic_write


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_streamed_pieces_replace_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        for piece in (b"one ", b"two ", b"three"):
            f.write(piece)
        assert path.read_bytes() == b"old"  # nothing visible before the block ends
    assert path.read_bytes() == b"one two three"
    assert _names(tmp_path) == ["out.bin"]


def test_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    with atomic_write(path) as f:
        assert stat.S_IMODE(os.fstat(f.fileno()).st_mode) == 0o600  # private while being written
        f.write(b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_replaced_file_becomes_private(tmp_path: Path) -> None:
    path = tmp_path / "was-public.bin"
    path.write_bytes(b"old")
    path.chmod(0o644)
    with atomic_write(path) as f:
        f.write(b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_producer_failure_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="producer crashed"), atomic_write(path) as f:
        f.write(b"half of the new content")
        raise RuntimeError("producer crashed")
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_failure_without_old_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "new.bin") as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert _names(tmp_path) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failing_fsync_or_rename_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def broken(*args: object) -> None:
        raise OSError(f"simulated {step} failure")

    monkeypatch.setattr(files.os, step, broken)
    with pytest.raises(OSError, match=f"simulated {step} failure"), atomic_write(path) as f:
        f.write(b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.bin"
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", spy)
    with atomic_write(path) as f:
        f.write(b"data")
    assert len(synced) == 2
    (file_path, file_is_dir), (dir_path, dir_is_dir) = synced
    assert Path(file_path).parent == tmp_path and Path(file_path).name.startswith(".out.bin.") and not file_is_dir
    assert Path(dir_path) == tmp_path and dir_is_dir
