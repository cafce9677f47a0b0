"""Micro-benchmarks of the per-round CPU work on the 94 MB ResNet-50 tensor set (one process).

``python -m bench.micro --reps R`` prints one JSON object of MB/s (or seconds) for:

* ``serialize_stream``: ``serialize_stream(...)`` (the PS's publish: wire-form frames, one copy
  per chunk, sent as is to every worker);
* ``encode_and_serialize``: ``encode_stream`` + ``SerializeToString`` of every frame (the publish
  path before ``serialize_stream``, whose serialization gRPC then repeated per worker);
* ``encode``: ``list(encode_stream(...))`` (protobuf frame objects; one ``tobytes`` copy per chunk);
* ``push_encode``: ``list(iter_serialized(...))`` (a worker's push as shipped: wire-form frames);
* ``encode_fp16``: the same with ``wire_dtype="float16"`` (the worker's fp16 push);
* ``serialize`` / ``parse``: protobuf ``SerializeToString`` / ``FromString`` of every frame (what
  gRPC does per pushed frame on each side);
* ``assemble``: the PS's Push as shipped: ``parse_frame`` of every raw frame (zero-copy chunk
  view) + ``Assembler.feed`` + ``finish`` into one reused assembler (as ``StagingPool`` reuses them); ``assemble_pb``: the same with a protobuf parse per
  frame instead (the path before 8e23acc);
* ``as_dtype_fp16``: float16 wire arrays back to float32 (the PS on an fp16 push);
* ``accumulate``: ``RoundAccumulator.add`` (validate + weighted add) of one update;
* ``accumulate_alt``: a candidate replacement for the weighted add (see the README): no
  temporary when the weight is 1.0, else a blockwise multiply-add into the running sum;
* ``unseal_read`` / ``unseal_old``: ``SealedReader.readinto`` over a sealed 94 MB stream as
  shipped (whole chunks decrypted straight into the caller's buffer with
  ``AESGCM.decrypt_into``), and the path it replaced (decrypt each chunk to new bytes, then
  copy), kept as the "before" reference.
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


def accumulate_alt(acc_sum: list[np.ndarray], arrays: list[np.ndarray], weight: float, block: int = 1 << 18) -> None:
    """Candidate for RoundAccumulator.add's loop: no full-size temporary per tensor."""
    for acc, a in zip(acc_sum, arrays):
        if weight == 1.0:
            acc += a
            continue
        w = np.float32(weight) if acc.dtype == np.float32 else weight
        fa, fs = a.reshape(-1), acc.reshape(-1)
        tmp = np.empty(min(block, fa.size), dtype=acc.dtype)
        for i in range(0, fa.size, block):
            n = min(block, fa.size - i)
            np.multiply(fa[i : i + n], w, out=tmp[:n])
            fs[i : i + n] += tmp[:n]


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


def readinto_reuse(reader: Any, buffer: Any) -> int:
    """Candidate ``SealedReader.readinto``: as shipped, but a chunk that does not fit the rest of
    the target (reads not aligned to chunks, e.g. ``decode_tensor_set``'s per-tensor reads) is
    decrypted with ``decrypt_into`` into one plaintext buffer reused per reader, instead of
    ``decrypt()`` allocating a fresh 1 MiB ``bytes`` (and faulting in its pages) per chunk.
    Every consumer of ``_pending`` copies out of it, and a chunk is decrypted only once
    ``_pending`` is empty, so reusing the buffer is safe; ``_next_chunk_into`` zeroes it on failure."""
    target = memoryview(buffer)
    if target.ndim != 1 or target.format != "B":
        target = target.cast("B")
    want = len(target)
    got = 0
    while got < want:
        if not reader._pending:
            if want - got >= reader._chunk_size:
                n = reader._next_chunk_into(target[got:])
                if n is None:
                    break
                got += n
                continue
            pbuf = reader.__dict__.get("_pbuf")
            if pbuf is None:
                pbuf = reader._pbuf = memoryview(bytearray(reader._chunk_size))
            n = reader._next_chunk_into(pbuf)
            if n is None:
                break
            reader._pending = pbuf[:n]
            continue
        take = min(want - got, len(reader._pending))
        target[got : got + take] = reader._pending[:take]
        reader._pending = reader._pending[take:]
        got += take
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from tdxfl.core.strategy import RoundAccumulator
    from tdxfl.store.sealed import SealedReader, SealedWriter
    from tdxfl.transport.proto import tdxfl_pb2 as pb
    from tdxfl.transport.tensors import (
        Assembler, as_dtype, decode_header, encode_stream, iter_serialized, parse_frame, serialize_stream)

    specs, _ = load_specs()
    size = nbytes(specs)
    ts = random_set(specs, 5, scale=1e-3)
    r = args.reps
    out: dict[str, float] = {"model_MB": size / MB}

    out["serialize_stream"] = size / MB / best_of(lambda: serialize_stream("weights", 0, ts), r)
    out["encode_and_serialize"] = size / MB / best_of(
        lambda: [f.SerializeToString() for f in encode_stream("weights", 0, ts)], r)
    out["encode"] = size / MB / best_of(lambda: list(encode_stream("weights", 0, ts)), r)
    out["push_encode"] = size / MB / best_of(lambda: list(iter_serialized("gradients", 0, ts, num_samples=32)), r)
    out["encode_fp16"] = size / MB / best_of(
        lambda: list(iter_serialized("gradients", 0, ts, num_samples=32, wire_dtype="float16")), r)
    frames = list(encode_stream("weights", 0, ts))
    wire = [f.SerializeToString() for f in frames]
    assert serialize_stream("weights", 0, ts) == wire, "serialize_stream differs from encode_stream + SerializeToString"
    out["serialize"] = size / MB / best_of(lambda: [f.SerializeToString() for f in frames], r)
    out["parse"] = size / MB / best_of(lambda: [pb.TensorFrame.FromString(w) for w in wire], r)
    header = decode_header(frames[0])

    staged = Assembler(header.specs)  # reused across pushes, as StagingPool does

    def assemble() -> None:  # the PS's Push: parse_frame (zero-copy chunk view) + Assembler.feed
        decode_header(parse_frame(wire[0]))
        staged.reset()
        for w in wire[1:]:
            staged.feed(parse_frame(w))
        staged.finish()

    def assemble_pb() -> None:  # before 8e23acc: protobuf parse (a copy) + feed
        decode_header(pb.TensorFrame.FromString(wire[0]))
        staged.reset()
        for w in wire[1:]:
            staged.feed(pb.TensorFrame.FromString(w).chunk)
        staged.finish()

    out["assemble"] = size / MB / best_of(assemble, r)
    out["assemble_pb"] = size / MB / best_of(assemble_pb, r)
    f16 = list(encode_stream("gradients", 0, ts, wire_dtype="float16"))
    h16 = decode_header(f16[0])
    asm16 = Assembler(h16.specs)
    for f in f16[1:]:
        asm16.feed(f.chunk)
    got16 = asm16.finish()
    out["as_dtype_fp16_s"] = best_of(lambda: as_dtype(got16, specs), r)
    acc = RoundAccumulator(specs)
    acc.add(ts, 1.0)  # first touch of the running sum
    out["accumulate_s"] = best_of(lambda: acc.add(ts, 1.0), r)
    out["accumulate_w32_s"] = best_of(lambda: acc.add(ts, 32.0), r)
    sums = [np.zeros(s.shape, np.float32) for s in specs]
    out["accumulate_alt_s"] = best_of(lambda: (ts.check_finite(), accumulate_alt(sums, ts.arrays, 1.0)), r)
    out["accumulate_alt_w32_s"] = best_of(lambda: (ts.check_finite(), accumulate_alt(sums, ts.arrays, 32.0)), r)
    # check the candidate computes what the shipped code does
    a1, a2 = RoundAccumulator(specs), [np.zeros(s.shape, np.float32) for s in specs]
    a1.add(ts, 3.0)
    accumulate_alt(a2, ts.arrays, 3.0)
    assert all(np.array_equal(x, y) for x, y in zip(a1._sum, a2)), "accumulate_alt differs"

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
