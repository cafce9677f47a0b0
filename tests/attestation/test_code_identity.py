"""The task code digest: known answers, the framing, and which files make up a task."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tdxfl.attestation.code_identity import TaskFile, digest_task, task_digest, task_files
from tdxfl.errors import ConfigError

#: the package of the known-answer vector: name -> content
PACKAGE = {
    "mytask/__init__.py": b"",
    "mytask/model.py": b"import numpy\n",
    "mytask/train.py": b"def train():\n    return 1\n",
}
PACKAGE_DIGEST = "180bd0c940a2912065d8c50574a66fc0657e7be425585d2aa0d107ce6a7dffffd6056118990cfe7d7c266d59d942cc1e"
SINGLE_FILE_DIGEST = "06021db19fe3162f478e597d9e5697631f625fcdf514ca85165580ceb941aad2c4457069a73bdb850c789cc4bea0fea9"


def write(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_known_answer_for_a_package(tmp_path: Path) -> None:
    write(tmp_path, PACKAGE)
    assert digest_task(tmp_path / "mytask").hex() == PACKAGE_DIGEST


def test_known_answer_for_one_file_and_its_framing_spelled_out(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_bytes(b'print("hello")\n')
    preimage = (
        b"tdxfl-task-v1\x00"
        + b"\x00\x00\x00\x00\x00\x00\x00\x08"  # u64be(len(name))
        + b"train.py"
        + b"\x00\x00\x00\x00\x00\x00\x00\x0f"  # u64be(len(content))
        + b'print("hello")\n'
    )
    assert digest_task(tmp_path / "train.py") == hashlib.sha384(preimage).digest()
    assert digest_task(tmp_path / "train.py").hex() == SINGLE_FILE_DIGEST


def test_package_files_are_named_under_the_package_and_sorted(tmp_path: Path) -> None:
    write(tmp_path, {**PACKAGE, "mytask/sub/b.py": b"b", "mytask/sub/a.py": b"a", "mytask/notes.txt": b"not code"})
    files = task_files(tmp_path / "mytask")
    assert [f.name for f in files] == [
        "mytask/__init__.py",
        "mytask/model.py",
        "mytask/sub/a.py",
        "mytask/sub/b.py",
        "mytask/train.py",
    ]
    assert files[2].path == tmp_path / "mytask" / "sub" / "a.py" and files[2].content == b"a"


def test_pycache_timestamps_and_permissions_do_not_count(tmp_path: Path) -> None:
    write(tmp_path, PACKAGE)
    pkg = tmp_path / "mytask"
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "model.cpython-311.py").write_bytes(b"stale")
    (pkg / "model.py").chmod(0o600)
    os.utime(pkg / "train.py", (0, 0))
    assert digest_task(pkg).hex() == PACKAGE_DIGEST


def test_how_the_path_is_spelled_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, PACKAGE)
    monkeypatch.chdir(tmp_path / "mytask")
    assert digest_task(Path(".")).hex() == PACKAGE_DIGEST
    assert digest_task(Path("../mytask/")).hex() == PACKAGE_DIGEST


def test_order_of_the_given_files_does_not_matter() -> None:
    files = [TaskFile(name, Path("/nowhere"), content) for name, content in PACKAGE.items()]
    assert task_digest(reversed(files)).hex() == PACKAGE_DIGEST


@pytest.mark.parametrize(
    "change",
    [
        {"mytask/model.py": b"import numpy \n"},  # one byte of content
        {"mytask/extra.py": b""},  # one more (empty) file
    ],
)
def test_any_change_to_the_code_changes_the_digest(tmp_path: Path, change: dict[str, bytes]) -> None:
    write(tmp_path, {**PACKAGE, **change})
    assert digest_task(tmp_path / "mytask").hex() != PACKAGE_DIGEST


def test_renamed_package_is_other_code(tmp_path: Path) -> None:
    write(tmp_path, {name.replace("mytask/", "other/"): c for name, c in PACKAGE.items()})
    assert digest_task(tmp_path / "other").hex() != PACKAGE_DIGEST


def test_framing_is_unambiguous() -> None:
    """Moving bytes between a name and a content, or between two files, changes the digest."""
    a = task_digest([TaskFile("a.py", Path("a"), b"xy")])
    b = task_digest([TaskFile("a.pyx", Path("a"), b"y")])
    c = task_digest([TaskFile("a.py", Path("a"), b"x"), TaskFile("b.py", Path("b"), b"y")])
    d = task_digest([TaskFile("a.py", Path("a"), b"xy"), TaskFile("b.py", Path("b"), b"")])
    assert len({a, b, c, d}) == 4


def test_duplicate_or_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        task_digest([TaskFile("a.py", Path("a"), b"1"), TaskFile("a.py", Path("b"), b"2")])
    with pytest.raises(ValueError, match="non-empty"):
        task_digest([TaskFile("", Path("a"), b"1")])


def test_what_is_not_a_task(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no code")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a .py file nor a package directory"):
        task_files(tmp_path / "README.md")
    with pytest.raises(ConfigError, match="holds no .py files"):
        task_files(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        task_files(tmp_path / "absent.py")
