"""Replacing a file atomically and durably: the one way tdxfl rewrites a file in place.

:func:`atomic_write` serves every file that is replaced whole (sealed files, the key broker's
keystore, the collateral cache, unsealed model outputs). Files that only grow, such as the key
broker's audit log, are appended to with their own fsync instead.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Replace ``path`` with what the ``with`` block writes to the yielded binary file.

    The block writes (and may stream, piece by piece) into a temporary file that is created with
    mode 0600 in ``path``'s directory and named ``.<name>.<random>.tmp``. When the block ends, the
    file is flushed, fsynced and renamed over ``path`` with ``os.replace``, and then the directory
    is fsynced so that the rename survives a crash too; ``path`` ends up with mode 0600. If the
    block raises, or any step before the rename fails, the temporary file is removed, ``path``
    keeps its previous content (or stays absent), and the exception propagates. A process killed
    mid-write can leave the temporary file behind, never a partial ``path``.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(target.parent)
