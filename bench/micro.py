"""Micro-benchmarks of the per-round CPU work on the 94 MB ResNet-50 tensor set (one process).

``python -m bench.micro --reps R`` prints one JSON object of MB/s (or seconds) for:

* ``receive``: what the PS does with one update's bytes as shipped: ``Assembler.fill`` with
  ``check_finite`` (NaN/inf checked block by block as the bytes land, here from memory) +
  ``RoundAccumulator.add(finite_checked=True)`` (blockwise add into the reused running sum);
  ``receive_old``: the same bytes filled without the check, then the add as it was before
  (``np.isfinite(a).all()`` per tensor, then ``acc += w * a`` with a tensor-sized temporary),
  asserted to give the same sum;
* ``to_wire_fp16_s`` / ``to_wire_bf16_s`` and ``as_dtype_fp16_s`` / ``as_dtype_bf16_s`` (``TensorSet.cast_to``): a
  worker's half-precision push conversion and the PS's conversion back to float32;
* ``unseal_read`` / ``unseal_old``: ``SealedReader.readinto`` over a sealed 94 MB in-memory stream
  as shipped (whole chunks decrypted straight into the caller's buffer with
  ``AESGCM.decrypt_into``), and the path it replaced in ccfb576 (decrypt each chunk to new
  bytes, then copy), kept as the "before" reference.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import MB, load_specs, median, nbytes, random_set


def best_of(fn: Callable[[], Any], reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return median(ts)


def add_old(acc_sum: list[np.ndarray], arrays: list[np.ndarray], weight: float) -> None:
    """``RoundAccumulator.add`` before this round of work: a full NaN pass, then a temporary per tensor."""
    for a in arrays:
        if not np.isfinite(a).all():
            raise ValueError("non-finite")
    for acc, a in zip(acc_sum, arrays):
        acc += np.float32(weight) * a


def readinto_old(reader: Any, buffer: Any) -> int:
    """``SealedReader.readinto`` before it decrypted into the target: decrypt to bytes, then copy."""
    target = memoryview(buffer).cast("B")
    got = 0
    while got < len(target):
        if not reader._pending:
            chunk = reader._next_chunk()
            if chunk is None:
                break
            reader._pending = memoryview(chunk)
        take = min(len(target) - got, len(reader._pending))
        target[got : got + take] = reader._pending[:take]
        reader._pending = reader._pending[take:]
        got += take
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from tdxfl.engine.records import TensorSet
    from tdxfl.engine.strategy import RoundAccumulator
    from tdxfl.store.sealed import SealedReader, SealedWriter
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.tensors import Assembler, decode_header, to_wire

    specs, _ = load_specs()
    size = nbytes(specs)
    ts = random_set(specs, 5, scale=1e-3)
    r = args.reps
    out: dict[str, float] = {"model_MB": size / MB}

    wire = to_wire(pb.TENSOR_KIND_GRADIENTS, 0, ts, num_samples=32)
    data = memoryview(b"".join(bytes(v) for v in wire.views()))

    def read_from(views: Any) -> None:  # what the link does: the next bytes into each view
        pos = read_from.pos  # type: ignore[attr-defined]
        for v in views:
            v.cast("B")[:] = data[pos : pos + len(v)]
            pos += len(v)
        read_from.pos = pos  # type: ignore[attr-defined]

    staged = Assembler(decode_header(wire.header).specs)  # reused, as StagingPool does
    acc = RoundAccumulator(specs)
    old_sum = [np.zeros(sp.shape, np.float32) for sp in specs]

    def receive() -> None:
        read_from.pos = 0  # type: ignore[attr-defined]
        acc.add(staged.fill(read_from, check_finite=True), 1.0, finite_checked=True)

    def receive_old() -> None:
        read_from.pos = 0  # type: ignore[attr-defined]
        add_old(old_sum, staged.fill(read_from).arrays, 1.0)

    receive()
    receive_old()  # first touch of both sums; then both hold the update once
    assert all(np.array_equal(x, y) for x, y in zip(acc.mean(), old_sum)), "shipped add differs from the old one"
    out["receive"] = size / MB / best_of(receive, r)
    out["receive_old"] = size / MB / best_of(receive_old, r)
    for name, dtype in (("fp16", "float16"), ("bf16", "bfloat16")):
        out[f"to_wire_{name}_s"] = best_of(
            lambda dtype=dtype: to_wire(pb.TENSOR_KIND_GRADIENTS, 0, ts, wire_dtype=dtype), r
        )
        half_wire = to_wire(pb.TENSOR_KIND_GRADIENTS, 0, ts, wire_dtype=dtype)
        half = TensorSet(decode_header(half_wire.header).specs, half_wire.arrays)
        out[f"as_dtype_{name}_s"] = best_of(lambda half=half: half.cast_to(specs), r)

    key = os.urandom(32)
    sealed = io.BytesIO()
    with SealedWriter(sealed, key, label="checkpoint") as w:
        for a in ts.arrays:
            w.write(a.reshape(-1).view(np.uint8))
    blob = sealed.getvalue()
    dst = bytearray(size)

    def unseal(into: bool) -> None:
        reader = SealedReader(io.BytesIO(blob), key, label="checkpoint")
        view = memoryview(dst)
        got = reader.readinto(view) if into else readinto_old(reader, view)
        assert got == size and reader.at_end

    out["unseal_old"] = size / MB / best_of(lambda: unseal(False), r)
    ref = bytes(dst)
    dst[:] = bytes(size)
    out["unseal_read"] = size / MB / best_of(lambda: unseal(True), r)
    assert bytes(dst) == ref, "shipped readinto differs from the old path"
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
