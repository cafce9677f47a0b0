"""The identity of a federation's task code: one SHA-384 digest over its Python files.

A task is either one ``.py`` file or a package directory. Its files are named by their POSIX path
relative to the task's *root*, the directory that holds the file or the package directory, so a
package's name is part of its files' names (``mytask/__init__.py``, ``mytask/model.py``) exactly
as it is part of their import names. A package's files are all ``*.py`` files under its directory,
in any subdirectory except ``__pycache__``.

The digest (``task_digest``) is SHA-384 over::

    b"tdxfl-task-v1\\x00"
    for each file, in ascending order of its name's UTF-8 bytes:
        u64be(len(name)) || name         (name: the relative POSIX path, UTF-8)
        u64be(len(content)) || content   (content: the file's bytes, unchanged)

Every length is an 8-byte big-endian unsigned integer, so no two different sets of files frame to
the same bytes. Nothing else enters: no timestamps, permissions, owners, or the root's location.
The 14-byte prefix separates this digest from every other SHA-384 in a TD's measurements.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tdxfl.errors import ConfigError

__all__ = ["TASK_DIGEST_PREFIX", "TASK_DIGEST_SIZE", "TaskFile", "digest_task", "task_digest", "task_files"]

TASK_DIGEST_SIZE = 48
TASK_DIGEST_PREFIX = b"tdxfl-task-v1\x00"
_SKIPPED_DIRS = frozenset({"__pycache__"})


@dataclass(frozen=True)
class TaskFile:
    """One file of a task: its name in the digest, where it was read from, and the bytes read.

    ``content`` is what the digest covers; a loader that executes exactly these bytes runs exactly
    the code that was measured.
    """

    name: str
    path: Path
    content: bytes


def task_files(path: Path) -> list[TaskFile]:
    """The files of the task at ``path`` (a ``.py`` file or a package directory), read once and
    sorted in digest order.

    ``path`` is made absolute lexically first (``os.path.abspath``, symbolic links kept), so
    ``.`` inside a package names the package. Raises ConfigError when ``path`` does not exist, is
    a file that is not ``.py``, is a directory without any ``.py`` file, or a file cannot be read.
    """
    path = Path(os.path.abspath(path))
    if path.is_file():
        if path.suffix != ".py":
            raise ConfigError(f"task {path} is neither a .py file nor a package directory")
        found = [path]
        root = path.parent
    elif path.is_dir():
        found = [p for p in path.rglob("*.py") if p.is_file() and not _SKIPPED_DIRS & set(p.relative_to(path).parts)]
        root = path.parent
        if not found:
            raise ConfigError(f"task directory {path} holds no .py files")
    else:
        raise ConfigError(f"task {path} does not exist")
    files = []
    for p in found:
        try:
            files.append(TaskFile(p.relative_to(root).as_posix(), p, p.read_bytes()))
        except OSError as e:
            raise ConfigError(f"cannot read task file {p}: {e}") from e
    return sorted(files, key=_order)


def _order(f: TaskFile) -> bytes:
    return f.name.encode("utf-8")


def task_digest(files: Iterable[TaskFile]) -> bytes:
    """SHA-384 over ``files`` in the framing of this module's docstring (48 bytes).

    The order of ``files`` does not matter (they are sorted by name); only names and contents
    enter. Raises ValueError when two files have the same name or a name is empty.
    """
    ordered = sorted(files, key=_order)
    names = [f.name for f in ordered]
    if "" in names or len(set(names)) != len(names):
        raise ValueError("task file names must be non-empty and distinct")
    h = hashlib.sha384(TASK_DIGEST_PREFIX)
    for f in ordered:
        name = f.name.encode("utf-8")
        h.update(struct.pack(">Q", len(name)) + name)
        h.update(struct.pack(">Q", len(f.content)))
        h.update(f.content)
    return h.digest()


def digest_task(path: Path) -> bytes:
    """The task digest of the task at ``path``: ``task_digest(task_files(path))``."""
    return task_digest(task_files(path))
