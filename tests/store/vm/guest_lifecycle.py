"""Guest side of tests/store/test_luks_vm.py: one phase of a LUKS2 volume lifecycle.

Runs *inside* the test VM (a Debian kernel with dm-crypt, booted by virtme-ng over the host's
root file system) as ``<venv python> guest_lifecycle.py PHASE SHARED_DIR``, where

* PHASE is ``boot1`` (create the volume on /dev/vda, open, write, close, reopen and verify,
  refuse a wrong key; all through the Python API) or ``boot2`` (the "second machine": open
  with ``tdxfl volume open --key-fd`` fed from a pipe, read and verify, ``tdxfl volume close``);
* SHARED_DIR is a read-only directory the test shares from a host tmpfs, holding
  ``key.hex`` (the test-only volume key) and ``payload.bin`` (what to store). The key goes
  from that file into memory and on to cryptsetup's stdin through tdxfl.store.luks.

Prints ``TDXFL-VM <phase> OK`` last; any failure exits non-zero (vng passes the status on).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

from tdxfl.errors import WrongKey
from tdxfl.store.luks import (
    WRONG_KEY_MESSAGE,
    close_volume,
    create_volume,
    luks_dump,
    mapper_path,
    open_volume,
)

DEVICE = Path("/dev/vda")
NAME = "tdxfl-ckpt"
MOUNT = Path("/tmp/tdxfl-volume")
FILE = "checkpoint.bin"
T0 = time.monotonic()
logging.basicConfig(level=logging.DEBUG, format="[guest %(relativeCreated)7.0f ms] %(message)s", stream=sys.stdout)


def step(message: str) -> None:
    print(f"[guest {time.monotonic() - T0:6.1f} s] {message}", flush=True)


def check_payload(expected: bytes) -> None:
    data = (MOUNT / FILE).read_bytes()
    if data != expected:
        raise SystemExit(f"payload mismatch: read {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}")
    step(f"verified {FILE}: {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()}")


def boot1(key: bytes, payload: bytes) -> None:
    size = DEVICE.stat().st_size if DEVICE.is_file() else int(Path("/sys/block/vda/size").read_text()) * 512
    create_volume(DEVICE, key, size, pbkdf="pbkdf2", pbkdf_iterations=1000)
    step(f"created LUKS2 volume with integrity on {DEVICE} ({size} bytes)")
    header = luks_dump(DEVICE)
    print(
        "\n".join(
            "    " + line
            for line in header.splitlines()
            if line.strip().startswith(("Version", "cipher", "integrity", "Key:", "sector", "PBKDF"))
        ),
        flush=True,
    )
    open_volume(DEVICE, key, NAME, MOUNT)
    step(f"opened as {mapper_path(NAME)}, mounted on {MOUNT}")
    with open(MOUNT / FILE, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    step(f"wrote {FILE}")
    close_volume(NAME, MOUNT)
    assert not mapper_path(NAME).exists(), "mapping still present after close"
    step("closed")
    open_volume(DEVICE, key, NAME, MOUNT, read_only=True)
    check_payload(payload)
    close_volume(NAME, MOUNT)
    step("reopened, verified, closed")
    wrong = bytes(b ^ 0x5A for b in key)
    try:
        open_volume(DEVICE, wrong, NAME, MOUNT)
    except WrongKey as e:
        assert WRONG_KEY_MESSAGE in str(e), str(e)
        assert key.hex() not in str(e) and wrong.hex() not in str(e)
        step(f"wrong key refused: {e}")
    else:
        raise SystemExit("a wrong key opened the volume")
    assert not mapper_path(NAME).exists(), "a wrong key left a mapping behind"


def cli(*args: str) -> None:
    """Run ``tdxfl volume ARGS`` in this process (saves a second interpreter start under TCG)."""
    # click comes from the venv's (or the installation's) site-packages, which -S leaves off sys.path.
    import site

    venv = Path(sys.executable).parent.parent
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in [str(venv / "lib" / version / "site-packages"), *site.getsitepackages()]:
        if Path(candidate).is_dir() and candidate not in sys.path:
            sys.path.append(candidate)
    # Load tdxfl/cli/volume.py by itself: importing the tdxfl.cli package would register (and
    # import) every command family, grpc and numpy included, which costs ~15 s under TCG.
    source = Path(__file__).resolve().parents[3] / "src" / "tdxfl" / "cli" / "volume.py"
    spec = importlib.util.spec_from_file_location("tdxfl_cli_volume", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.volume.main(args=list(args), prog_name="tdxfl volume", standalone_mode=False)


def boot2(key: bytes, payload: bytes) -> None:
    # The second machine uses the CLI, with the key handed over on a pipe (--key-fd).
    r, w = os.pipe()
    os.write(w, key)
    os.close(w)
    cli("open", str(DEVICE), "--name", NAME, "--mount", str(MOUNT), "--key-fd", str(r))
    step(f"second machine: tdxfl volume open {DEVICE} --key-fd: mounted on {MOUNT}")
    check_payload(payload)
    cli("close", "--name", NAME, "--mount", str(MOUNT))
    assert not mapper_path(NAME).exists(), "mapping still present after tdxfl volume close"
    step("tdxfl volume close: closed")


def main() -> None:
    phase, shared = sys.argv[1], Path(sys.argv[2])
    # Test-environment speed-up only: udevd under TCG takes seconds per dm event, so let
    # libdevmapper create the /dev/mapper nodes itself instead of waiting for udev.
    os.environ["DM_DISABLE_UDEV"] = "1"
    step(f"{phase}: kernel {os.uname().release}")
    subprocess.run(["modprobe", "-a", "virtio_blk", "ext4", "dm-mod", "dm-crypt", "dm-integrity"], check=True)
    key = bytes.fromhex((shared / "key.hex").read_text().strip())
    payload = (shared / "payload.bin").read_bytes()
    {"boot1": boot1, "boot2": boot2}[phase](key, payload)
    print(f"TDXFL-VM {phase} OK", flush=True)


if __name__ == "__main__":
    main()
