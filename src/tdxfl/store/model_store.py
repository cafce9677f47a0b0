"""Model stores: named, durable places for tensor sets (checkpoints) and their metadata.

:class:`SealedFileStore` keeps each model in ``<directory>/<name>.sealed``, a sealed file
(:mod:`tdxfl.store.sealed`) whose encrypted payload is the :mod:`tensors_codec` encoding of the
tensors *and* the metadata dict (training metrics can leak information, so they are never in the
clear header). The clear, authenticated header holds only the model name and content type; load
checks them, so a sealed file renamed or copied to another name is refused.

Errors (:mod:`tdxfl.errors`): an invalid model name is a ``ConfigError``; a missing, tampered,
truncated, renamed or wrongly keyed model file is a ``SealedFileError`` (``WrongKey`` for the
wrong key).

Not covered: rollback. Someone able to write the directory can put back an *older* sealed file
of the same name; detecting that needs a monotonic counter held outside the disk.
"""

from __future__ import annotations

import abc
import builtins
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from tdxfl.engine.records import TensorSet
from tdxfl.errors import ConfigError, RecordError, SealedFileError
from tdxfl.store.sealed import DEFAULT_CHUNK_SIZE, check_key, open_sealed, seal_file
from tdxfl.store.tensors_codec import decode_tensor_set, encode_tensor_set

__all__ = [
    "SEALED_SUFFIX",
    "ModelStore",
    "SealedFileStore",
    "validate_model_name",
]

SEALED_SUFFIX: Final = ".sealed"
_CONTENT_TYPE: Final = "tdxfl/tensor-set+v1"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_model_name(name: str, *, what: str = "model") -> str:
    """Return ``name`` if it is 1-128 chars of ``[A-Za-z0-9._-]`` not starting with ``.``, ``_`` or ``-``.

    This rules out path separators, ``..``-style traversal, hidden files, NUL and other bytes that
    mean something to a file system. Raises ConfigError ("invalid <what> name ...") otherwise.
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError(
            f"invalid {what} name {name!r}: use 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit"
        )
    return name


class ModelStore(abc.ABC):
    """Named storage for tensor sets with a JSON-compatible metadata dict."""

    @abc.abstractmethod
    def save(self, name: str, tensors: TensorSet, metadata: Mapping[str, Any] | None = None) -> str:
        """Store ``tensors`` and ``metadata`` under ``name``, replacing any previous version atomically.

        Returns where it was stored (a path or URI). ``metadata`` must be JSON-serializable.
        """

    @abc.abstractmethod
    def load(self, name: str) -> tuple[TensorSet, dict[str, Any]]:
        """Return the tensors and metadata stored under ``name``; SealedFileError if none."""

    @abc.abstractmethod
    def list(self) -> builtins.list[str]:
        """Return the stored model names, sorted."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool:
        """Whether a model is stored under ``name``."""


class SealedFileStore(ModelStore):
    """Models sealed at rest in ``<directory>/<name>.sealed`` under a 32-byte store key.

    ``label`` is bound into every file's key derivation and checked on load, so keys for different
    purposes (e.g. ``"model"`` vs ``"checkpoint"``) cannot be confused. The directory is created
    (mode 0700) if missing. Files are written atomically and are mode 0600.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        key: bytes,
        *,
        label: str = "model",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        """Raise ValueError if ``key`` is not 32 bytes."""
        self._key = check_key(key)
        self._label = label
        self._chunk_size = chunk_size
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SealedFileStore({str(self.directory)!r}, label={self._label!r})"

    def path_for(self, name: str) -> Path:
        """The file that holds (or would hold) model ``name``."""
        return self.directory / (validate_model_name(name) + SEALED_SUFFIX)

    @staticmethod
    def _header(name: str) -> bytes:
        return json.dumps({"name": name, "content": _CONTENT_TYPE}, separators=(",", ":")).encode("utf-8")

    def save(self, name: str, tensors: TensorSet, metadata: Mapping[str, Any] | None = None) -> str:
        """Seal ``tensors`` and ``metadata`` (both inside the ciphertext) to ``<name>.sealed`` atomically."""
        path = self.path_for(name)
        seal_file(
            path,
            self._key,
            encode_tensor_set(tensors, metadata),
            label=self._label,
            metadata=self._header(name),
            chunk_size=self._chunk_size,
        )
        return str(path)

    def load(self, name: str) -> tuple[TensorSet, dict[str, Any]]:
        """Authenticate, decrypt and decode model ``name``.

        Raises SealedFileError if it is absent, tampered with, truncated or sealed under another
        label or name, or if its authenticated payload is not a valid tensor set; WrongKey if it
        is sealed under another key.
        """
        path = self.path_for(name)
        try:
            reader = open_sealed(path, self._key, label=self._label)
        except FileNotFoundError:
            raise SealedFileError(f"no model named {name!r} in {self.directory}") from None
        with reader:
            if reader.metadata != self._header(name):
                raise SealedFileError(f"{path.name} does not hold model {name!r} (file renamed or substituted)")
            try:
                return decode_tensor_set(reader)
            except RecordError as exc:
                raise SealedFileError(f"{path.name}: authenticated payload is not a valid tensor set: {exc}") from None

    def list(self) -> builtins.list[str]:
        """Names of the ``*.sealed`` files with valid model names, sorted (temporary files are skipped)."""
        names = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(SEALED_SUFFIX) and entry.is_file():
                stem = entry.name[: -len(SEALED_SUFFIX)]
                if _NAME_RE.fullmatch(stem):
                    names.append(stem)
        return sorted(names)

    def exists(self, name: str) -> bool:
        """Whether ``<name>.sealed`` exists (its contents are not checked)."""
        return self.path_for(name).is_file()

    def delete(self, name: str) -> None:
        """Remove model ``name``; SealedFileError if absent."""
        try:
            self.path_for(name).unlink()
        except FileNotFoundError:
            raise SealedFileError(f"no model named {name!r} in {self.directory}") from None
