"""P4: sealed checkpoint write/read of the 94 MB ResNet-50 tensor set vs a plain file of the same bytes.

``python -m bench.p4_sealed --reps R --dir DIR``

* sealed write: ``SealedFileStore.save`` (tensors_codec encoding -> AES-256-GCM chunks -> temp
  file -> flush + fsync -> os.replace -> directory fsync, see ``seal_file``);
* plain write: the same ``encode_tensor_set`` pieces written with the *same* durability policy
  (``tdxfl.files.atomic_write``: flush + fsync, os.replace, directory fsync);
* sealed read: ``SealedFileStore.load`` (authenticate + decrypt + decode into fresh arrays);
* plain read: ``decode_tensor_set`` on the plain file (fresh arrays, ``readinto``).

* sealed read, old path (``detail.sealed_read_old_path_s``): the same ``load`` with
  ``SealedReader.readinto`` swapped (bench-only) for the path it replaced in ccfb576 — decrypt
  each chunk to new bytes, then copy (``bench.micro.readinto_old``) — so the shipped change's
  before/after is measured in the same run.

Both reads come from the page cache (the files were just written; dropping caches needs
privileges the suite does not assume), so the read ratio is the CPU cost of unsealing.
Sealed and plain runs alternate, and the three reads take turns being first after the writes (the
first read after two fsync'd writes runs slower). Throughput = model bytes / median time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bench.common import MB, load_specs, log, median, nbytes, random_set


def plain_save(path: Path, pieces: object) -> None:
    from tdxfl.files import atomic_write

    with atomic_write(path) as f:
        for piece in pieces:  # type: ignore[attr-defined]
            f.write(piece)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()

    from bench.micro import readinto_old
    from tdxfl.store.model_store import SealedFileStore
    from tdxfl.store.sealed import SealedReader
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
    t: dict[str, list[float]] = {
        "sealed_write": [],
        "plain_write": [],
        "sealed_read": [],
        "plain_read": [],
        "sealed_read_old_path": [],
    }
    shipped_readinto = SealedReader.readinto

    def timed_load(key: str, i: int, readinto: object = None) -> None:
        """One load, timed into ``t[key]``; the result is checked (warm-up) and freed before the
        next load, so every variant allocates its arrays under the same conditions."""
        if readinto is not None:
            SealedReader.readinto = readinto  # type: ignore[method-assign]
        try:
            s = time.perf_counter()
            if key == "plain_read":
                with open(plain, "rb") as f:
                    got, _ = decode_tensor_set(f)
            else:
                got, _ = store.load("final")
            dt = time.perf_counter() - s
        finally:
            SealedReader.readinto = shipped_readinto  # type: ignore[method-assign]
        if i == 0:
            assert all((a == b).all() for a, b in zip(got.arrays, model.arrays)), key
        else:
            t[key].append(dt)
        del got

    for i in range(args.reps + 1):
        s0 = time.perf_counter()
        store.save("final", model, meta)
        s1 = time.perf_counter()
        plain_save(plain, encode_tensor_set(model, meta))
        s2 = time.perf_counter()
        if i:
            t["sealed_write"].append(s1 - s0)
            t["plain_write"].append(s2 - s1)
        loads: list[tuple[str, object]] = [
            ("sealed_read", None),
            ("plain_read", None),
            ("sealed_read_old_path", readinto_old),
        ]
        for key, readinto in loads[i % len(loads) :] + loads[: i % len(loads)]:  # each rep in another order
            timed_load(key, i, readinto)
        if i:
            log(f"P4 rep {i}: " + " ".join(f"{k} {v[-1]:.3f}s" for k, v in t.items()))
    med = {k: median(v) for k, v in t.items()}
    out = {k + "_MBps": size / MB / v for k, v in med.items()}
    out.update({k + "_s": v for k, v in med.items()})
    out["model_bytes"] = size
    out["sealed_file_bytes"] = store.path_for("final").stat().st_size
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
