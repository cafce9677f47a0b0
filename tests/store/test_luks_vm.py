"""A real LUKS2 lifecycle of tdxfl.store.luks, inside a small VM (two boots of a Debian kernel).

This host's kernel has no device-mapper, so the test boots Debian's kernel (dm-crypt and
dm-integrity as modules) under qemu with software emulation (TCG; the host's /dev/kvm cannot
run it) through virtme-ng, which runs the guest over the host's root file system (read-only
9p with overlays): the guest runs this checkout's ``tdxfl.store.luks`` with the host's own
cryptsetup and mkfs.ext4. The volume image is a host file attached as a raw virtio disk
(``/dev/vda``), so it survives from one boot to the next:

* boot 1: create (luksFormat with integrity, open, mkfs.ext4, close), open + mount, write a
  file, close, reopen and verify, refuse a wrong key;
* between boots the host checks the header (LUKS2, hmac(sha256)) and that neither the key
  nor the file's content is in the image in the clear;
* boot 2 ("the second machine"): open with the key, read and verify the file, close.

Test-only key route: the key is written as hex to a private directory on a *tmpfs*
(/dev/shm, mode 0700/0600), shared read-only into the guest with ``--rodir`` and deleted
afterwards; it never touches a disk and is not on any command line.

Needs what ``scripts/provision-vm-test.sh`` installs (CI runs it before pytest); fails, rather
than skips, without it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdxfl.store.luks import allocate_image, luks_dump

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = Path(__file__).resolve().parent / "vm" / "guest_lifecycle.py"
GUEST_SHARED = "/run/tdxfl-test"
IMAGE_SIZE = 40 * 1024 * 1024
BOOT_TIMEOUT_S = 360
PROVISION = "run scripts/provision-vm-test.sh first (as root)"


def _kernel() -> Path:
    cache = Path(os.environ.get("TDXFL_VM_KERNEL_DIR") or Path.home() / ".cache" / "tdxfl" / "vm-kernel")
    try:
        version = (cache / "current").read_text().strip()
    except OSError:
        pytest.fail(f"no VM kernel in {cache}: {PROVISION}")
    kernel = cache / version / "boot" / f"vmlinuz-{version}"
    if not kernel.is_file() or not (cache / version / ".complete").exists():
        pytest.fail(f"incomplete VM kernel {kernel}: {PROVISION}")
    return kernel


def _vng() -> Path:
    vng = Path(sys.executable).parent / "vng"
    if not vng.exists():
        found = shutil.which("vng")
        if found is None:
            pytest.fail(f"virtme-ng (vng) is not installed: {PROVISION}")
        vng = Path(found)
    for tool in ("qemu-system-x86_64", "cryptsetup", "mkfs.ext4", "busybox", "udevadm", "depmod"):
        if shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])) is None:
            pytest.fail(f"{tool} is not installed: {PROVISION}")
    return vng


def _tmpfs_dir() -> Path:
    """A private directory on a tmpfs, for the test-only key file."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    for candidate in ("/dev/shm", "/run"):
        if any(line.split()[1:3] == [candidate, "tmpfs"] for line in mounts) and os.access(candidate, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="tdxfl-vmtest-", dir=candidate))
    pytest.fail("no writable tmpfs (/dev/shm or /run) for the test key")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A tmpfs directory (mode 0700) shared read-only into the guest; removed afterwards."""
    path = _tmpfs_dir()
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _boot(vng: Path, kernel: Path, image: Path, shared: Path, phase: str, log: Path) -> tuple[str, float]:
    """Boot the VM once running the guest script's ``phase``; return its output and duration."""
    drive = f"-drive if=none,id=d0,format=raw,cache=unsafe,file={image} -device virtio-blk-pci,drive=d0"
    # One short command (it travels on the kernel command line); -S: the guest script needs only
    # the standard library and this checkout's src/, and skipping site saves seconds under TCG.
    command = f"{sys.executable} -S {GUEST_SCRIPT} {phase} {GUEST_SHARED}"
    argv = [
        str(vng), "--run", str(kernel), "--verbose", "--disable-kvm", "--force-9p", "--memory", "1G", "--cpus", "2",
        "--append", "cryptomgr.notests=1", "--rodir", f"{GUEST_SHARED}={shared}",
        f"--qemu-opts={drive}", "--exec", command,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(vng.parent), env.get("PATH", ""), "/usr/sbin", "/sbin"])
    start = time.monotonic()
    # stdout and stderr share one pipe (qemu reopens them separately; a pipe keeps one log).
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env, cwd=REPO, timeout=BOOT_TIMEOUT_S, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    output = proc.stdout.decode("utf-8", "replace")
    log.write_text(output)
    print(f"--- {phase}: exit {proc.returncode} after {elapsed:.1f} s ---\n{output}")
    assert proc.returncode == 0, f"{phase} failed in the VM (exit {proc.returncode}); log in {log}:\n{output[-4000:]}"
    assert f"TDXFL-VM {phase} OK" in output, f"{phase} did not report success; log in {log}"
    return output, elapsed


def test_luks_lifecycle_across_two_boots(tmp_path: Path, shared_dir: Path) -> None:
    vng, kernel = _vng(), _kernel()
    key = secrets.token_bytes(32)
    marker = b"TDXFL-CHECKPOINT-" + secrets.token_hex(8).encode()
    payload = (marker + b"\n") * 64 + secrets.token_bytes(64 * 1024)
    _write_private(shared_dir / "key.hex", key.hex().encode())
    _write_private(shared_dir / "payload.bin", payload)
    image = allocate_image(tmp_path / "volume.img", IMAGE_SIZE)

    out1, t1 = _boot(vng, kernel, image, shared_dir, "boot1", tmp_path / "boot1.log")
    assert "wrong key or not a LUKS volume" in out1
    assert f"sha256={hashlib.sha256(payload).hexdigest()}" in out1

    header = luks_dump(image)  # works on this host without device-mapper
    assert "Version:       \t2" in header or "Version: 2" in " ".join(header.split())
    assert "integrity: hmac(sha256)" in header
    assert "cipher: aes-xts-plain64" in header
    blob = image.read_bytes()
    assert key not in blob and key.hex().encode() not in blob
    assert marker not in blob, "the file's content is in the image in the clear"

    out2, t2 = _boot(vng, kernel, image, shared_dir, "boot2", tmp_path / "boot2.log")
    assert f"sha256={hashlib.sha256(payload).hexdigest()}" in out2
    for output in (out1, out2):
        assert key.hex() not in output
    print(f"VM lifecycle: boot1 {t1:.1f} s, boot2 {t2:.1f} s, total {t1 + t2:.1f} s")
