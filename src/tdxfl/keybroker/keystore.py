"""The key broker's key file: named 32-byte model keys with their release policies, sealed at rest.

On-disk format (one file; nothing else is invented -- the body is a :mod:`tdxfl.store.sealed`
stream)::

    b"TDXFLKS1 " + params JSON + b"\\n"     clear, names how the wrapping key is obtained
    sealed stream                          label "tdxfl-keystore", header metadata = params JSON

``params`` is ``{"kdf": "scrypt", "n": .., "r": .., "p": .., "context": "tdxfl/keystore/<random>"}``
(wrapping key = :func:`tdxfl.store.keys.derive_store_key` over the operator passphrase; the random
context makes the scrypt salt unique per keystore) or ``{"kdf": "keyfile"}`` (wrapping key = the 32
bytes, or 64 hex digits, in a file the operator controls). The params are also the sealed header's
authenticated metadata, so editing the clear copy only yields "wrong passphrase or tampered".

Errors (:mod:`tdxfl.errors`): ``WrongKey`` for a wrong passphrase or key file (or a tampered
header: the two cannot be told apart), ``SealedFileError`` for a keystore that is missing,
damaged or tampered with, ``ConfigError`` for invalid requests and settings (key names, roles,
a missing or weak passphrase, an unusable key file, an existing keystore in the way, an unknown
or existing key name).

The sealed payload is JSON::

    {"version": 1, "audit_secret": hex, "keys": {name: {"key": hex, "policy": {...},
                                                        "roles": [...], "created": iso-time}}}

Writes are atomic and durable (:func:`tdxfl.files.atomic_write`) and serialised with ``flock`` on
``<keystore>.lock``, so ``tdxfl keybroker new-key`` may run while the broker serves; the broker
reloads the file when it changes. Key bytes live only in this process's memory (Python cannot
wipe ``bytes``; the process boundary is the protection) and never appear in reprs or errors.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tdxfl.attestation.policy import Policy
from tdxfl.errors import ConfigError, SealedFileError, WrongKey
from tdxfl.files import atomic_write
from tdxfl.store.keys import SCRYPT_N, SCRYPT_P, SCRYPT_R, derive_store_key
from tdxfl.store.model_store import validate_model_name
from tdxfl.store.sealed import KEY_SIZE, SealedReader, SealedWriter

__all__ = [
    "KeyEntry",
    "KeyInfo",
    "Keystore",
    "read_key_file",
]

MAGIC: Final = b"TDXFLKS1 "
LABEL: Final = "tdxfl-keystore"
PAYLOAD_VERSION: Final = 1
_MAX_PARAMS: Final = 4096
_ROLE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class KeyInfo:
    """A key's public description: everything but the key bytes."""

    name: str
    policy: Policy
    roles: tuple[str, ...]
    created: str


@dataclass(frozen=True)
class KeyEntry:
    """A key with its release policy and allowed roles. ``key`` is kept out of ``repr``."""

    name: str
    key: bytes = field(repr=False)
    policy: Policy
    roles: tuple[str, ...]
    created: str

    @property
    def info(self) -> KeyInfo:
        """The entry without its key bytes."""
        return KeyInfo(self.name, self.policy, self.roles, self.created)


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte wrapping key in ``path``: raw 32 bytes, or 64 hex digits (whitespace ignored).

    Refuses files other users can read or write (the key must be as private as a passphrase).
    """
    p = Path(path)
    try:
        st = p.stat()
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read key file {p}: {e.strerror or e}") from None
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError(f"key file {p} is accessible by group/others (mode {st.st_mode & 0o777:o}); chmod 600 it")
    if len(raw) == KEY_SIZE:
        return raw
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise ConfigError(f"key file {p} must hold exactly {KEY_SIZE} raw bytes or {2 * KEY_SIZE} hex digits")
    return key


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    if isinstance(roles, str):
        raise ConfigError("roles must be a list of role names, not a string")
    out = tuple(dict.fromkeys(r.strip() for r in roles if r.strip()))
    if not out:
        raise ConfigError("a key needs at least one role allowed to fetch it (e.g. ps, worker)")
    bad = [r for r in out if not _ROLE_RE.fullmatch(r)]
    if bad:
        raise ConfigError(f"invalid role names {bad}: use lower-case letters, digits, '-' and '_'")
    return out


class Keystore:
    """The broker's named model keys, sealed in one file. Build with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, wrap_key: bytes, params: dict[str, Any]) -> None:
        """Use :meth:`create` / :meth:`open`; this constructor does no I/O."""
        self.path = path
        self._wrap_key = wrap_key
        self._params = params
        self._entries: dict[str, KeyEntry] = {}
        self._audit_secret = b""
        self._stamp: tuple[int, int, int] | None = None
        self._mutex = threading.RLock()

    def __repr__(self) -> str:
        return f"Keystore({str(self.path)!r}, kdf={self._params.get('kdf')!r}, keys={len(self._entries)})"

    # -- opening --------------------------------------------------------------------------
    @staticmethod
    def _wrap_key_for(
        params: dict[str, Any], passphrase: str | bytes | None, key_file: str | os.PathLike[str] | None
    ) -> bytes:
        kdf = params.get("kdf")
        if kdf == "scrypt":
            if passphrase is None:
                raise ConfigError("this keystore is protected by a passphrase; none was given")
            if not passphrase:
                raise ConfigError("the keystore passphrase is empty")
            try:
                return derive_store_key(
                    passphrase, str(params["context"]), n=int(params["n"]), r=int(params["r"]), p=int(params["p"])
                )
            except (KeyError, TypeError, ValueError) as e:
                raise SealedFileError(f"keystore KDF parameters are invalid: {e}") from None
        if kdf == "keyfile":
            if key_file is None:
                raise ConfigError("this keystore is protected by a key file; none was given")
            return read_key_file(key_file)
        raise SealedFileError(f"keystore names an unknown key protection {kdf!r}")

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        scrypt_n: int = SCRYPT_N,
    ) -> Keystore:
        """Create an empty keystore at ``path`` (which must not exist).

        Exactly one of ``passphrase`` (scrypt, ``scrypt_n`` >= 2**14) or ``key_file`` protects it.
        """
        if (passphrase is None) == (key_file is None):
            raise ConfigError("protect the keystore with either a passphrase or a key file (exactly one)")
        if isinstance(passphrase, str) and len(passphrase) < 8:
            raise ConfigError("the keystore passphrase must be at least 8 characters")
        p = Path(path)
        if p.exists():
            raise ConfigError(f"{p} already exists; refusing to overwrite a keystore")
        params: dict[str, Any]
        if passphrase is not None:
            params = {
                "kdf": "scrypt",
                "n": scrypt_n,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
                "context": f"tdxfl/keystore/{os.urandom(16).hex()}",
            }
        else:
            params = {"kdf": "keyfile"}
        store = cls(p, cls._wrap_key_for(params, passphrase, key_file), params)
        store._audit_secret = os.urandom(KEY_SIZE)
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with store._locked():
            if p.exists():
                raise ConfigError(f"{p} already exists; refusing to overwrite a keystore")
            store._write()
        return store

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> Keystore:
        """Open and authenticate the keystore at ``path``.

        Raises WrongKey for a wrong passphrase or key file (or a tampered header), SealedFileError
        for a missing, damaged or tampered file, ConfigError when the protection it needs was not
        given or the key file is unusable.
        """
        p = Path(path)
        params = cls._read_params(p)
        store = cls(p, cls._wrap_key_for(params, passphrase, key_file), params)
        store._load()
        return store

    @staticmethod
    def _read_params(path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as f:
                line = f.readline(_MAX_PARAMS)
        except FileNotFoundError:
            raise SealedFileError(f"no keystore at {path} (create one with `tdxfl keybroker new-key`)") from None
        except OSError as e:
            raise SealedFileError(f"cannot read keystore {path}: {e.strerror or e}") from None
        if not line.startswith(MAGIC) or not line.endswith(b"\n"):
            raise SealedFileError(f"{path} is not a tdxfl keystore (bad magic)")
        try:
            params = json.loads(line[len(MAGIC) :])
        except ValueError:
            raise SealedFileError(f"{path}: keystore header is corrupt") from None
        if not isinstance(params, dict):
            raise SealedFileError(f"{path}: keystore header is corrupt")
        return params

    @staticmethod
    def _params_bytes(params: dict[str, Any]) -> bytes:
        return json.dumps(params, sort_keys=True, separators=(",", ":")).encode()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self) -> None:
        with self._mutex:
            self._load_unlocked()

    def _load_unlocked(self) -> None:
        stamp = self._file_stamp()
        try:
            with self.path.open("rb") as f:
                line = f.readline(_MAX_PARAMS)
                on_disk = json.loads(line[len(MAGIC) :])
                if on_disk != self._params:
                    raise SealedFileError(f"{self.path}: keystore protection changed under us; reopen it")
                try:
                    with SealedReader(f, self._wrap_key, label=LABEL) as reader:
                        sealed_params = reader.metadata
                        payload = reader.read()
                        reader.verify_to_end()
                except WrongKey:
                    raise WrongKey(
                        f"cannot open keystore {self.path}: wrong passphrase or key file, or the file was tampered with"
                    ) from None
                except SealedFileError as e:
                    raise SealedFileError(f"keystore {self.path} is damaged: {e}") from None
        except FileNotFoundError:
            raise SealedFileError(f"no keystore at {self.path}") from None
        except ValueError as e:
            raise SealedFileError(f"{self.path}: keystore header is corrupt: {e}") from None
        if sealed_params != self._params_bytes(self._params):
            raise SealedFileError(f"{self.path}: keystore header does not match its sealed copy (tampered)")
        self._entries, self._audit_secret = self._decode(payload)
        self._stamp = stamp

    def _decode(self, payload: bytes) -> tuple[dict[str, KeyEntry], bytes]:
        try:
            doc = json.loads(payload)
            if doc.get("version") != PAYLOAD_VERSION:
                raise SealedFileError(f"unsupported keystore payload version {doc.get('version')!r}")
            audit_secret = bytes.fromhex(doc["audit_secret"])
            entries = {}
            for name, raw in doc["keys"].items():
                key = bytes.fromhex(raw["key"])
                if len(key) != KEY_SIZE:
                    raise SealedFileError(f"key {name!r} in the keystore is not {KEY_SIZE} bytes")
                entries[name] = KeyEntry(
                    name, key, Policy.from_dict(raw["policy"]), tuple(raw["roles"]), str(raw["created"])
                )
        except SealedFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as e:
            # Authenticated but unreadable: written by an incompatible version. Never echo the payload.
            raise SealedFileError(f"keystore {self.path} payload is malformed ({type(e).__name__})") from None
        return entries, audit_secret

    def _encode(self) -> bytes:
        keys = {
            e.name: {"key": e.key.hex(), "policy": e.policy.to_dict(), "roles": list(e.roles), "created": e.created}
            for e in self._entries.values()
        }
        doc = {"version": PAYLOAD_VERSION, "audit_secret": self._audit_secret.hex(), "keys": keys}
        return json.dumps(doc, sort_keys=True).encode()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._mutex:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _write(self) -> None:
        """Atomically replace the keystore file with the current entries (caller holds the lock)."""
        params = self._params_bytes(self._params)
        with atomic_write(self.path) as f:
            f.write(MAGIC + params + b"\n")
            with SealedWriter(f, self._wrap_key, label=LABEL, metadata=params) as writer:
                writer.write(self._encode())
        self._stamp = self._file_stamp()

    def refresh(self) -> None:
        """Reload the file if another process (e.g. ``new-key``) changed it since we read it."""
        with self._mutex:
            if self._file_stamp() != self._stamp:
                self._load_unlocked()

    # -- keys -----------------------------------------------------------------------------
    def new_key(self, name: str, policy: Policy, roles: Sequence[str]) -> KeyInfo:
        """Generate a fresh random 32-byte key ``name`` released only under ``policy`` to ``roles``.

        Raises ConfigError if ``name`` exists or is invalid, or ``roles`` is empty/invalid.
        """
        name = validate_model_name(name, what="key")
        role_tuple = _check_roles(roles)
        if not isinstance(policy, Policy):
            raise TypeError("policy must be a tdxfl.attestation.policy.Policy")
        with self._locked():
            self._load()
            if name in self._entries:
                raise ConfigError(f"a key named {name!r} already exists")
            entry = KeyEntry(name, os.urandom(KEY_SIZE), policy, role_tuple, _now())
            self._entries[name] = entry
            try:
                self._write()
            except BaseException:
                del self._entries[name]
                raise
        return entry.info

    def set_policy(self, name: str, policy: Policy | None = None, roles: Sequence[str] | None = None) -> KeyInfo:
        """Replace the release policy and/or roles of key ``name`` (the key bytes stay)."""
        with self._locked():
            self._load()
            old = self._get(name)
            entry = KeyEntry(
                name,
                old.key,
                policy if policy is not None else old.policy,
                _check_roles(roles) if roles is not None else old.roles,
                old.created,
            )
            self._entries[name] = entry
            try:
                self._write()
            except BaseException:
                self._entries[name] = old
                raise
        return entry.info

    def _get(self, name: str) -> KeyEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"no key named {name!r} in the keystore") from None

    def get(self, name: str) -> KeyEntry:
        """Key ``name`` with its policy and roles (reloading the file if it changed)."""
        with self._mutex:
            self.refresh()
            return self._get(name)

    def list(self) -> builtins.list[KeyInfo]:
        """Every key's name, policy, roles and creation time (no key bytes), sorted by name."""
        with self._mutex:
            self.refresh()
            return [self._entries[n].info for n in sorted(self._entries)]

    def audit_mac_key(self) -> bytes:
        """The HMAC key for this broker's audit log (random, kept in the keystore)."""
        return self._audit_secret
