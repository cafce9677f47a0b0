"""P4: sealed checkpoint write/read of the 94 MB ResNet-50 tensor set vs a plain file of the same bytes.

``python -m bench.p4_sealed --reps R --dir DIR``

* sealed write: ``SealedFileStore.save`` (tensors_codec encoding -> AES-256-GCM chunks -> temp
  file -> flush + fsync -> os.replace -> directory fsync, see ``seal_file``);
* plain write: the same ``encode_tensor_set`` pieces written to a temp file with the *same*
  durability policy (flush + fsync, os.replace, directory fsync);
* sealed read: ``SealedFileStore.load`` (authenticate + decrypt + decode into fresh arrays);
* plain read: ``decode_tensor_set`` on the plain file (fresh arrays, ``readinto``).

Both reads come from the page cache (the files were just written; dropping caches needs
privileges the suite does not assume), so the read ratio is the CPU cost of unsealing.
Sealed and plain runs alternate. Throughput = model bytes / median time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import MB, load_specs, log, median, nbytes, random_set


def plain_save(path: Path, pieces: object) -> None:
    from tdxfl.store.sealed import _fsync_dir

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        for piece in pieces:  # type: ignore[attr-defined]
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()

    from tdxfl.store.model_store import SealedFileStore
    from tdxfl.store.tensors_codec import decode_tensor_set, encode_tensor_set

    specs, _ = load_specs()
    model = random_set(specs, 3)
    meta = {"round": 1, "accuracy": 0.5, "model": "resnet50"}
    size = nbytes(specs)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    store = SealedFileStore(d / "sealed", os.urandom(32), label="checkpoint")
    plain = d / "plain" / "final.bin"
    plain.parent.mkdir(exist_ok=True)
    t: dict[str, list[float]] = {"sealed_write": [], "plain_write": [], "sealed_read": [], "plain_read": []}
    for i in range(args.reps + 1):
        s0 = time.perf_counter()
        store.save("final", model, meta)
        s1 = time.perf_counter()
        plain_save(plain, encode_tensor_set(model, meta))
        s2 = time.perf_counter()
        got, _ = store.load("final")
        s3 = time.perf_counter()
        with open(plain, "rb") as f:
            got2, _ = decode_tensor_set(f)
        s4 = time.perf_counter()
        if i == 0:
            assert all((a == b).all() for a, b in zip(got.arrays, model.arrays))
            assert all((a == b).all() for a, b in zip(got2.arrays, model.arrays))
            continue  # warm-up (first-touch page faults, file creation)
        del got, got2
        for k, v in zip(t, (s1 - s0, s2 - s1, s3 - s2, s4 - s3)):
            t[k].append(v)
        log(f"P4 rep {i}: sealed write {s1 - s0:.3f}s plain write {s2 - s1:.3f}s sealed read {s3 - s2:.3f}s plain read {s4 - s3:.3f}s")
    med = {k: median(v) for k, v in t.items()}
    out = {k + "_MBps": size / MB / v for k, v in med.items()}
    out.update({k + "_s": v for k, v in med.items()})
    out["model_bytes"] = size
    out["sealed_file_bytes"] = store.path_for("final").stat().st_size
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
