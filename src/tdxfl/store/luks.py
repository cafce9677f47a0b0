"""LUKS2 volumes with integrity protection, for checkpoints at rest inside a trust domain.

A volume is an image file (or a block device) formatted as LUKS2 with *authenticated*
encryption, opened through device-mapper and mounted as ext4; a
:class:`~tdxfl.store.model_store.SealedFileStore` can then keep its files on the mount.

Cryptsetup options, and why
---------------------------
``--type luks2 --cipher aes-xts-plain64 --key-size 512 --integrity hmac-sha256 --sector-size 4096``

* Plain LUKS (XTS alone) is malleable: someone who can write the disk can flip ciphertext bits
  and the guest reads garbage (or chosen 16-byte-block garbage) without noticing. With
  ``--integrity hmac-sha256`` dm-integrity keeps a 32-byte HMAC-SHA256 tag per sector, keyed
  by a part of the volume key, and a tampered sector reads back as an I/O error. (Like every
  block-level scheme it does not detect *rollback* of a whole image to an older copy.)
* ``aes-xts-plain64`` + ``hmac-sha256`` (encrypt-then-MAC over the sector and its number) is
  the combination cryptsetup documents as stable; ``aes-gcm-random`` + ``aead`` is documented
  as experimental (random 96-bit nonces per sector write) and is not used.
* 4096-byte sectors: one tag per 4 KiB instead of per 512 B, less metadata and I/O.
* dm-integrity's journal is kept (the default): without it a crash can leave sectors whose
  data and tag disagree, which then read as I/O errors.
* ``luksFormat`` wipes the data area once to initialise the tags (this is what makes the first
  ``mkfs.ext4`` reads succeed); its cost grows with the volume size.

Keys
----
The key is 32 to 8192 bytes handed over in memory (from the key broker, a pipe, ...). It is
used as the LUKS *passphrase* and reaches ``cryptsetup`` only on its standard input
(``--key-file -``), never in argv, the environment, a file, a log line or an exception
message. Production volumes use argon2id (cryptsetup's benchmark picks the cost unless
``iter_time_ms``/``pbkdf_memory_kib`` are given); ``pbkdf="pbkdf2"`` with a low
``pbkdf_iterations`` is for tests only: since the key is already a full-entropy machine key,
the KDF is defence in depth, not the main barrier.

Requirements: ``cryptsetup`` (2.4+), ``mkfs.ext4``, ``mount``/``umount``, root, and a kernel
with device-mapper, dm-crypt and dm-integrity. Kernels without device-mapper (such as some
sandboxes) can still format a volume *without* integrity, dump its header and test a key;
everything that maps the volume fails saying so.

Errors (:mod:`tdxfl.errors`; messages never contain key material): ``WrongKey`` when the key
does not open the volume (or the image is not a LUKS volume), ``SealedFileError`` when another
volume operation fails, ``ConfigError`` for an invalid argument (key size, volume name, size,
KDF settings, an image file that already exists), and plain ``TdxflError`` when this machine
lacks what volumes need (device-mapper, cryptsetup, mkfs.ext4, mount).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from tdxfl.errors import ConfigError, SealedFileError, TdxflError, WrongKey

__all__ = [
    "DEFAULT_CIPHER",
    "DEFAULT_INTEGRITY",
    "KEY_MAX_BYTES",
    "KEY_MIN_BYTES",
    "NO_DEVICE_MAPPER_MESSAGE",
    "WRONG_KEY_MESSAGE",
    "Pbkdf",
    "allocate_image",
    "close_volume",
    "create_volume",
    "device_mapper_available",
    "format_volume",
    "is_luks",
    "luks_dump",
    "mapper_path",
    "open_volume",
    "verify_key",
]

log = logging.getLogger(__name__)

DEFAULT_CIPHER: Final = "aes-xts-plain64"
DEFAULT_INTEGRITY: Final = "hmac-sha256"
KEY_MIN_BYTES: Final = 32
KEY_MAX_BYTES: Final = 8192
_SECTOR_SIZE: Final = 4096
_MIN_SIZE: Final = 32 * 1024 * 1024  # LUKS2 header (16 MiB) + room for tags, journal and ext4
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MOUNT_OPTIONS: Final = "nodev,nosuid,noexec"
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")  # /proc/self/mountinfo escapes space, tab, newline, backslash

NO_DEVICE_MAPPER_MESSAGE: Final = (
    "this kernel has no device-mapper (dm-crypt); run inside a TD VM with dm-crypt or use the sealed-file store"
)
WRONG_KEY_MESSAGE: Final = "wrong key or not a LUKS volume"

Pbkdf = Literal["argon2id", "pbkdf2"]


_INSTALL_HINT: Final = {
    "cryptsetup": "install cryptsetup (apt-get install cryptsetup)",
    "mkfs.ext4": "install e2fsprogs (apt-get install e2fsprogs)",
    "mount": "install mount (apt-get install mount)",
    "umount": "install mount (apt-get install mount)",
}


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError("the volume key must be bytes")
    key = bytes(key)
    if not KEY_MIN_BYTES <= len(key) <= KEY_MAX_BYTES:
        raise ConfigError(f"the volume key must be {KEY_MIN_BYTES} to {KEY_MAX_BYTES} bytes, got {len(key)}")
    return key


def _check_name(name: str) -> str:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError(
            f"invalid volume name {name!r}: use 1-64 characters from [A-Za-z0-9._-], starting with a letter or digit"
        )
    return name


def mapper_path(name: str) -> Path:
    """The device-mapper node of an open volume called ``name``."""
    return Path("/dev/mapper") / _check_name(name)


def _run(
    argv: Sequence[str],
    *,
    what: str,
    key: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` with ``key`` (if any) on stdin only; return the completed process (any exit status).

    Raises TdxflError if the program is not installed. Nothing raised or logged here includes
    ``key``.
    """
    program = argv[0]
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # stable messages to classify
    log.debug("running %s", " ".join(argv))
    try:
        return subprocess.run(
            list(argv),
            input=key if key is not None else b"",
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        hint = _INSTALL_HINT.get(Path(program).name, f"install {Path(program).name}")
        raise TdxflError(f"{what}: {program} not found; {hint}") from None
    except subprocess.TimeoutExpired:
        raise SealedFileError(f"{what}: {program} did not finish within {timeout} s") from None


def _stderr(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = (proc.stderr or b"").decode("utf-8", "replace").strip()
    return " / ".join(line.strip() for line in text.splitlines() if line.strip())


def _failure(proc: subprocess.CompletedProcess[bytes], what: str, target: str) -> TdxflError:
    """Turn a failed cryptsetup/mount run into the clearest error (from cryptsetup's messages)."""
    err = _stderr(proc)
    lowered = err.lower()
    if "device-mapper" in lowered and ("cannot initialize" in lowered or "not supported" in lowered):
        return TdxflError(f"{what} {target}: {NO_DEVICE_MAPPER_MESSAGE}")
    if "no key available" in lowered or "not a valid luks device" in lowered:
        return WrongKey(f"{what} {target}: {WRONG_KEY_MESSAGE}")
    if proc.args and Path(str(proc.args[0])).name == "cryptsetup" and proc.returncode == 2:
        return WrongKey(f"{what} {target}: {WRONG_KEY_MESSAGE}")
    return SealedFileError(f"{what} {target} failed (exit status {proc.returncode}): {err or 'no message'}")


def _cryptsetup() -> str:
    path = shutil.which("cryptsetup") or next(
        (p for p in ("/usr/sbin/cryptsetup", "/sbin/cryptsetup") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise TdxflError("cryptsetup not found; install cryptsetup (apt-get install cryptsetup)")
    return path


def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (
            p
            for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}", f"/bin/{name}")
            if os.access(p, os.X_OK)
        ),
        None,
    )
    if path is None:
        raise TdxflError(f"{name} not found; {_INSTALL_HINT.get(name, 'install ' + name)}")
    return path


def _dm_present() -> bool:
    # Not /dev/mapper/control: a stale node can exist (libdevmapper or a package may create it)
    # on a kernel without device-mapper. The kernel lists the driver as a misc device.
    if Path("/sys/class/misc/device-mapper").exists():
        return True
    try:
        return any(line.split()[-1:] == ["device-mapper"] for line in Path("/proc/misc").read_text().splitlines())
    except OSError:
        return False


def device_mapper_available(*, load_modules: bool = True) -> bool:
    """Whether this kernel offers device-mapper (needed to open or create an integrity volume).

    With ``load_modules`` (and when running as root), first try ``modprobe -q -a dm-mod dm-crypt
    dm-integrity`` so a kernel that has them as modules is ready; failures are ignored.
    """
    if load_modules and not Path("/sys/module/dm_crypt").exists() and os.geteuid() == 0:
        modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if os.access("/sbin/modprobe", os.X_OK) else None)
        if modprobe is not None:
            try:
                subprocess.run(
                    [modprobe, "-q", "-a", "dm-mod", "dm-crypt", "dm-integrity"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=60,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                pass
    return _dm_present()


def _require_device_mapper(what: str, target: str) -> None:
    if not device_mapper_available():
        raise TdxflError(f"{what} {target}: {NO_DEVICE_MAPPER_MESSAGE}")


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def allocate_image(image_path: str | os.PathLike[str], size_bytes: int) -> Path:
    """Create a new sparse image file of ``size_bytes`` (mode 0600); ConfigError if it exists.

    ``size_bytes`` must be a multiple of 4096 and at least 32 MiB (the LUKS2 header alone
    takes 16 MiB).
    """
    path = Path(image_path)
    _check_size(size_bytes)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"cannot create {path}: it already exists (refusing to overwrite a volume)") from None
    except OSError as e:
        raise SealedFileError(f"cannot create {path}: {e.strerror}") from None
    try:
        os.ftruncate(fd, size_bytes)
    except OSError as e:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise SealedFileError(f"cannot allocate {size_bytes} bytes for {path}: {e.strerror}") from None
    os.close(fd)
    return path


def _check_size(size_bytes: int) -> None:
    if not isinstance(size_bytes, int) or size_bytes < _MIN_SIZE or size_bytes % _SECTOR_SIZE:
        raise ConfigError(
            f"volume size must be a multiple of {_SECTOR_SIZE} bytes and at least {_MIN_SIZE} bytes, got {size_bytes!r}"
        )


def _pbkdf_args(
    pbkdf: Pbkdf, pbkdf_memory_kib: int | None, iter_time_ms: int | None, pbkdf_iterations: int | None
) -> list[str]:
    if pbkdf not in ("argon2id", "pbkdf2"):
        raise ConfigError(f"pbkdf must be 'argon2id' or 'pbkdf2', not {pbkdf!r}")
    args = ["--pbkdf", pbkdf]
    if pbkdf_memory_kib is not None:
        if pbkdf != "argon2id":
            raise ConfigError("pbkdf_memory_kib applies to argon2id only")
        args += ["--pbkdf-memory", str(int(pbkdf_memory_kib))]
    if pbkdf_iterations is not None and iter_time_ms is not None:
        raise ConfigError("give iter_time_ms or pbkdf_iterations, not both")
    if pbkdf_iterations is not None:
        args += ["--pbkdf-force-iterations", str(int(pbkdf_iterations))]
    elif iter_time_ms is not None:
        args += ["--iter-time", str(int(iter_time_ms))]
    return args


def format_volume(
    image_path: str | os.PathLike[str],
    key: bytes,
    *,
    integrity: str | None = DEFAULT_INTEGRITY,
    cipher: str = DEFAULT_CIPHER,
    pbkdf: Pbkdf = "argon2id",
    pbkdf_memory_kib: int | None = None,
    iter_time_ms: int | None = None,
    pbkdf_iterations: int | None = None,
    label: str | None = None,
    timeout: float | None = None,
) -> None:
    """``cryptsetup luksFormat`` an existing image file or block device as LUKS2; no file system.

    ``integrity=None`` formats without authentication (malleable ciphertext) and exists only so
    hosts without device-mapper can exercise the header path in tests; integrity formatting
    needs device-mapper (to wipe and initialise the tags).
    """
    key = _check_key(key)
    path = Path(image_path)
    if not path.exists():
        raise SealedFileError(f"cannot format {path}: no such file or device")
    argv = [_cryptsetup(), "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", cipher]
    if cipher.endswith("-xts-plain64"):
        argv += ["--key-size", "512"]
    if integrity is not None:
        argv += ["--integrity", integrity]
    argv += ["--sector-size", str(_SECTOR_SIZE)]
    argv += _pbkdf_args(pbkdf, pbkdf_memory_kib, iter_time_ms, pbkdf_iterations)
    if label is not None:
        argv += ["--label", label]
    argv += ["--key-file", "-", str(path)]
    proc = _run(argv, what="luksFormat", key=key, timeout=timeout)
    if proc.returncode != 0:
        raise _failure(proc, "cannot format", str(path))


def _unlock(path: Path, key: bytes, name: str, *, read_only: bool = False, timeout: float | None = None) -> Path:
    argv = [_cryptsetup(), "open", "--type", "luks2"]
    if read_only:
        argv.append("--readonly")
    argv += ["--key-file", "-", str(path), name]
    proc = _run(argv, what="luksOpen", key=key, timeout=timeout)
    if proc.returncode != 0:
        raise _failure(proc, "cannot open", str(path))
    return mapper_path(name)


def _lock(name: str, *, timeout: float | None = None) -> None:
    if not mapper_path(name).exists():
        return
    proc = _run([_cryptsetup(), "close", name], what="luksClose", timeout=timeout)
    if proc.returncode != 0:
        raise _failure(proc, "cannot close volume", name)


def create_volume(
    image_path: str | os.PathLike[str],
    key: bytes,
    size_bytes: int,
    *,
    pbkdf: Pbkdf = "argon2id",
    pbkdf_memory_kib: int | None = None,
    iter_time_ms: int | None = None,
    pbkdf_iterations: int | None = None,
    integrity: str = DEFAULT_INTEGRITY,
    label: str | None = None,
) -> None:
    """Create a ready-to-open volume: allocate, luksFormat (with integrity), open, mkfs.ext4, close.

    ``image_path`` is either a new file (created sparse with ``size_bytes``, mode 0600; an
    existing file is refused) or an existing block device of at least ``size_bytes`` (which is
    overwritten). Production use keeps ``pbkdf="argon2id"``; tests may pass
    ``pbkdf="pbkdf2", pbkdf_iterations=1000``. On failure a file this call allocated is removed.
    Raises TdxflError on kernels without device-mapper or when cryptsetup/mkfs.ext4 are missing,
    SealedFileError otherwise.
    """
    key = _check_key(key)
    _check_size(size_bytes)
    path = Path(image_path)
    _cryptsetup()
    mkfs = _tool("mkfs.ext4")
    _require_device_mapper("cannot create volume", str(path))
    created = False
    if _is_block_device(path):
        with open(path, "rb") as dev:
            actual = dev.seek(0, os.SEEK_END)
        if actual < size_bytes:
            raise SealedFileError(f"{path} holds {actual} bytes, less than the {size_bytes} asked for")
    else:
        allocate_image(path, size_bytes)
        created = True
    try:
        format_volume(
            path,
            key,
            integrity=integrity,
            pbkdf=pbkdf,
            pbkdf_memory_kib=pbkdf_memory_kib,
            iter_time_ms=iter_time_ms,
            pbkdf_iterations=pbkdf_iterations,
            label=label,
        )
        name = "tdxfl-new-" + secrets.token_hex(6)
        device = _unlock(path, key, name)
        try:
            proc = _run([mkfs, "-q", "-F", "-E", "nodiscard", "-L", "tdxfl", str(device)], what="mkfs.ext4")
            if proc.returncode != 0:
                raise SealedFileError(
                    f"mkfs.ext4 on {path} failed (exit status {proc.returncode}): {_stderr(proc) or 'no message'}"
                )
        finally:
            _lock(name)
    except BaseException:
        if created:
            path.unlink(missing_ok=True)
        raise
    log.info("created LUKS2 volume %s (%d bytes, %s)", path, size_bytes, integrity)


def _is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(mountpoint)
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]) == target:
            return True
    return False


def open_volume(
    image_path: str | os.PathLike[str],
    key: bytes,
    name: str,
    mountpoint: str | os.PathLike[str],
    *,
    read_only: bool = False,
) -> Path:
    """Unlock the volume (key on cryptsetup's stdin) as ``/dev/mapper/<name>`` and mount it on ``mountpoint``.

    The mount point is created (mode 0700) if missing; the file system is mounted
    ``nodev,nosuid,noexec``. Returns the mount point. If mounting fails the mapping is closed
    again. Raises WrongKey, TdxflError (no device-mapper, missing programs) or SealedFileError.
    """
    key = _check_key(key)
    _check_name(name)
    path = Path(image_path)
    mnt = Path(mountpoint)
    if not path.exists():
        raise SealedFileError(f"cannot open {path}: no such file or device")
    _cryptsetup()
    mount = _tool("mount")
    _require_device_mapper("cannot open", str(path))
    if mapper_path(name).exists():
        raise SealedFileError(f"cannot open {path}: a volume named {name!r} is already open")
    mnt.mkdir(mode=0o700, parents=True, exist_ok=True)
    device = _unlock(path, key, name, read_only=read_only)
    options = _MOUNT_OPTIONS + (",ro" if read_only else "")
    try:
        proc = _run([mount, "-t", "ext4", "-o", options, str(device), str(mnt)], what="mount")
        if proc.returncode != 0:
            raise SealedFileError(
                f"cannot mount {path} on {mnt} (exit status {proc.returncode}): {_stderr(proc) or 'no message'}"
            )
    except BaseException:
        _lock(name)
        raise
    log.info("opened %s as %s on %s", path, device, mnt)
    return mnt


def close_volume(name: str, mountpoint: str | os.PathLike[str]) -> None:
    """Unmount ``mountpoint`` (if mounted) and close ``/dev/mapper/<name>`` (if open).

    Closing what is already closed is not an error. Raises SealedFileError if the file system or
    the mapping is busy.
    """
    _check_name(name)
    mnt = Path(mountpoint)
    if _is_mounted(mnt):
        proc = _run([_tool("umount"), str(mnt)], what="umount")
        if proc.returncode != 0:
            raise SealedFileError(
                f"cannot unmount {mnt} (exit status {proc.returncode}): {_stderr(proc) or 'no message'}"
            )
    _lock(name)
    log.info("closed volume %s", name)


def verify_key(image_path: str | os.PathLike[str], key: bytes) -> None:
    """Check that ``key`` opens the LUKS volume at ``image_path`` without mapping it.

    Works without device-mapper (``cryptsetup open --test-passphrase``). Raises WrongKey
    ("wrong key or not a LUKS volume") otherwise.
    """
    key = _check_key(key)
    path = Path(image_path)
    if not path.exists():
        raise SealedFileError(f"cannot open {path}: no such file or device")
    proc = _run([_cryptsetup(), "open", "--test-passphrase", "--key-file", "-", str(path)], what="luksOpen", key=key)
    if proc.returncode != 0:
        raise _failure(proc, "cannot open", str(path))


def is_luks(image_path: str | os.PathLike[str]) -> bool:
    """Whether ``image_path`` starts with a LUKS header (``cryptsetup isLuks``)."""
    path = Path(image_path)
    if not path.exists():
        return False
    return _run([_cryptsetup(), "isLuks", str(path)], what="isLuks").returncode == 0


def luks_dump(image_path: str | os.PathLike[str]) -> str:
    """The ``cryptsetup luksDump`` text of the volume header (no secrets: no volume key is dumped)."""
    path = Path(image_path)
    proc = _run([_cryptsetup(), "luksDump", str(path)], what="luksDump")
    if proc.returncode != 0:
        raise _failure(proc, "cannot read the LUKS header of", str(path))
    return proc.stdout.decode("utf-8", "replace")
