"""Tests for the sealed-file format: round trips, tamper / reorder / truncation detection, atomicity, memory."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdxfl.errors import SealedFileError, WrongKey
from tdxfl.store import sealed
from tdxfl.store.sealed import (
    SealedReader,
    SealedWriter,
    open_sealed,
    read_sealed_bytes,
    seal_file,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CS = 64  # small chunk size so tests can address individual chunks
LABEL = "test"


def seal(data: bytes, *, key: bytes = KEY, chunk_size: int = CS, metadata: bytes = b"", label: str = LABEL) -> bytes:
    buf = io.BytesIO()
    with SealedWriter(buf, key, label=label, metadata=metadata, chunk_size=chunk_size) as w:
        w.write(data)
    return buf.getvalue()


def unseal(blob: bytes, *, key: bytes = KEY, label: str | None = None) -> bytes:
    return SealedReader(io.BytesIO(blob), key, label=label).read()


def header_len(label: str = LABEL, metadata: bytes = b"") -> int:
    """Header body plus header tag, per the documented layout."""
    return 9 + 1 + 32 + 4 + 2 + len(label.encode()) + 4 + len(metadata) + 16


def chunk_spans(blob: bytes, hlen: int) -> list[tuple[int, int, int]]:
    """(record start, ciphertext start, record end) for every chunk record."""
    spans = []
    pos = hlen
    while pos < len(blob):
        flag, n = struct.unpack(">BI", blob[pos : pos + 5])
        end = pos + 5 + n + 16
        spans.append((pos, pos + 5, end))
        pos = end
    return spans


def flip(blob: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(blob)
    b[index] ^= mask
    return bytes(b)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 7, 10 * CS - 1])
def test_round_trip_sizes(size: int) -> None:
    data = os.urandom(size)
    blob = seal(data)
    assert unseal(blob) == data
    n_chunks = max(1, -(-size // CS))
    assert len(chunk_spans(blob, header_len())) == n_chunks
    assert len(blob) == header_len() + n_chunks * 21 + size


@pytest.mark.parametrize("size", [0, 1, CS, 5 * CS, 5 * CS + 3])
def test_round_trip_write_and_read_patterns(size: int) -> None:
    data = os.urandom(size)
    # many small writes, including empty ones and a bytearray / memoryview / non-byte view
    buf = io.BytesIO()
    w = SealedWriter(buf, KEY, label=LABEL, chunk_size=CS)
    w.write(b"")
    pos = 0
    for step in [1, 7, CS, 2 * CS + 5, 3]:
        w.write(memoryview(bytearray(data[pos : pos + step])))
        pos += step
    w.write(data[pos:])
    w.close()
    w.close()  # idempotent
    blob = buf.getvalue()
    # read back: iteration, small read(n), readinto, read()
    assert b"".join(SealedReader(io.BytesIO(blob), KEY)) == data
    r = SealedReader(io.BytesIO(blob), KEY)
    parts = []
    while piece := r.read(5):
        parts.append(piece)
    assert b"".join(parts) == data and r.at_end
    r = SealedReader(io.BytesIO(blob), KEY)
    target = bytearray(size + 10)
    got = 0
    while n := r.readinto(memoryview(target)[got : got + 13]):
        got += n
    assert got == size and bytes(target[:size]) == data
    r = SealedReader(io.BytesIO(blob), KEY)
    assert r.read(3) == data[:3] and r.read() == data[3:] and r.read() == b"" and r.read(4) == b""


def test_large_single_write_matches_small_writes_format() -> None:
    data = os.urandom(10 * CS + 9)
    blob = seal(data)
    assert unseal(blob) == data
    spans = chunk_spans(blob, header_len())
    assert [blob[s] for s, _, _ in spans] == [0] * 10 + [1]


def test_non_byte_buffer_is_written_as_raw_bytes() -> None:
    import array

    arr = array.array("I", range(1000))
    blob = seal(arr)  # type: ignore[arg-type]
    assert unseal(blob) == arr.tobytes()


def test_metadata_and_label_are_authenticated_and_exposed() -> None:
    blob = seal(b"payload", metadata=b"meta-data", label="model-v2")
    r = SealedReader(io.BytesIO(blob), KEY, label="model-v2")
    assert r.metadata == b"meta-data" and r.label == "model-v2" and r.chunk_size == CS and len(r.file_id) == 32
    assert r.read() == b"payload"
    with pytest.raises(SealedFileError, match="key label 'model-v2', expected 'model'"):
        SealedReader(io.BytesIO(blob), KEY, label="model")


def test_same_payload_seals_differently_each_time() -> None:
    data = b"A" * 300
    a, b = seal(data), seal(data)
    assert a != b
    assert a[10:42] != b[10:42]  # fresh salt


def test_no_plaintext_in_sealed_bytes() -> None:
    marker = b"TDXFL-PLAINTEXT-MARKER-7f3a"
    data = (marker + os.urandom(17)) * 200
    blob = seal(data, chunk_size=1000)
    assert marker not in blob
    assert marker[:12] not in blob


# -- key handling -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"", b"x" * 16, b"x" * 31, b"x" * 33, b"x" * 64, "k" * 32])
def test_bad_key_rejected(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SealedWriter(io.BytesIO(), bad, label=LABEL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        SealedReader(io.BytesIO(seal(b"x")), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        seal_file(tmp_path / "f", bad, [b"x"], label=LABEL)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="32 bytes"):
        open_sealed(tmp_path / "f", bad)  # type: ignore[arg-type]


def test_key_never_in_repr_or_errors() -> None:
    buf = io.BytesIO()
    w = SealedWriter(buf, KEY, label=LABEL)
    w.write(b"abc")
    w.close()
    r = SealedReader(io.BytesIO(buf.getvalue()), KEY)
    for text in (repr(w), repr(r)):
        assert KEY.hex() not in text and repr(KEY) not in text
    with pytest.raises(SealedFileError) as info:
        SealedReader(io.BytesIO(buf.getvalue()), OTHER_KEY)
    assert OTHER_KEY.hex() not in str(info.value) and KEY.hex() not in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"label": ""}, {"label": "x" * 256}, {"chunk_size": 0}, {"chunk_size": (1 << 26) + 1}]
)
def test_bad_writer_parameters(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"label": LABEL, **kwargs}
    with pytest.raises(ValueError):
        SealedWriter(io.BytesIO(), KEY, **args)  # type: ignore[arg-type]


def test_metadata_size_limit() -> None:
    with pytest.raises(ValueError, match="metadata"):
        SealedWriter(io.BytesIO(), KEY, label=LABEL, metadata=b"x" * ((1 << 20) + 1))


# -- refusals ---------------------------------------------------------------------------------


def test_wrong_key() -> None:
    with pytest.raises(WrongKey, match="^wrong key or tampered header$"):
        unseal(seal(b"secret"), key=OTHER_KEY)


def test_only_a_header_that_fails_authentication_is_a_wrong_key() -> None:
    """WrongKey is the header check (wrong key or tampered header); other damage is not."""
    blob = seal(os.urandom(3 * CS))
    hlen = header_len()
    with pytest.raises(WrongKey):
        unseal(flip(blob, hlen - 1))  # the header tag
    for damaged in (flip(blob, hlen + 10), blob[:-1], blob + b"x", b"not sealed" * 10):
        with pytest.raises(SealedFileError) as info:
            unseal(damaged)
        assert not isinstance(info.value, WrongKey), str(info.value)
    with pytest.raises(SealedFileError) as info:
        unseal(seal(b"x", label="other"), label=LABEL)
    assert not isinstance(info.value, WrongKey)


@pytest.mark.parametrize("blob", [b"", b"TDXFL", b"PK\x03\x04" + b"\x00" * 200, os.urandom(500)])
def test_not_a_sealed_file(blob: bytes) -> None:
    with pytest.raises(SealedFileError, match="not a sealed file"):
        unseal(blob)


def test_unsupported_version() -> None:
    blob = bytearray(seal(b"data"))
    blob[9] = 2
    with pytest.raises(SealedFileError, match="unsupported sealed file version 2"):
        unseal(bytes(blob))


def test_every_header_byte_is_protected() -> None:
    meta = b"some-meta"
    blob = seal(os.urandom(2 * CS + 3), metadata=meta)
    hlen = header_len(metadata=meta)
    for i in range(hlen):
        for mask in (0x01, 0x80):
            if i < 9:
                expected = "not a sealed file"
            elif i == 9:
                expected = "unsupported sealed file version"
            else:
                expected = "tampered header"
            with pytest.raises(SealedFileError, match=expected):
                unseal(flip(blob, i, mask))


def chunk_regions(blob: bytes, hlen: int) -> list[tuple[int, str, int]]:
    """(chunk index, region name, byte offset) for each region of every chunk."""
    out = []
    for idx, (start, ct, end) in enumerate(chunk_spans(blob, hlen)):
        tag = end - 16
        out += [(idx, "flag", start), (idx, "length", start + 4)]
        if tag > ct:
            out += [(idx, "ct-first", ct), (idx, "ct-middle", (ct + tag) // 2), (idx, "ct-last", tag - 1)]
        out += [(idx, "tag-first", tag), (idx, "tag-last", end - 1)]
    return out


@pytest.mark.parametrize("size", [0, 3 * CS, 3 * CS + 10])
def test_tamper_each_chunk_region(size: int) -> None:
    data = os.urandom(size)
    blob = seal(data)
    for idx, region, offset in chunk_regions(blob, header_len()):
        tampered = flip(blob, offset)
        released: list[bytes] = []
        with pytest.raises(SealedFileError) as info:
            for piece in SealedReader(io.BytesIO(tampered), KEY):
                released.append(piece)
        msg = str(info.value)
        if region == "length":
            # a bad length breaks the framing: refused as unauthenticated or as cut short
            assert f"chunk {idx} failed authentication" in msg or "truncated" in msg, (region, msg)
        else:
            assert msg.startswith(f"chunk {idx} failed authentication (tampered or wrong key)"), (region, msg)
        # only the chunks before the tampered one were released, and they were genuine
        assert b"".join(released) == data[: idx * CS], region


def test_swap_chunks() -> None:
    data = os.urandom(3 * CS + 5)
    blob = seal(data)
    (s0, _, e0), (s1, _, e1), _, _ = chunk_spans(blob, header_len())
    swapped = blob[:s0] + blob[s1:e1] + blob[s0:e0] + blob[e1:]
    with pytest.raises(SealedFileError, match="^chunk 0 failed authentication"):
        unseal(swapped)


def test_swap_final_chunk_into_middle() -> None:
    data = os.urandom(2 * CS)  # two full chunks: same lengths, second one final
    blob = seal(data)
    (s0, _, e0), (s1, _, e1) = chunk_spans(blob, header_len())
    swapped = blob[:s0] + blob[s1:e1] + blob[s0:e0]
    with pytest.raises(SealedFileError, match="^chunk 0 failed authentication"):
        unseal(swapped)


def test_duplicate_chunk() -> None:
    blob = seal(os.urandom(3 * CS + 5))
    s0, _, e0 = chunk_spans(blob, header_len())[0]
    dup = blob[:e0] + blob[s0:e0] + blob[e0:]
    with pytest.raises(SealedFileError, match="^chunk 1 failed authentication"):
        unseal(dup)


def test_drop_middle_chunk() -> None:
    blob = seal(os.urandom(3 * CS + 5))
    s1, _, e1 = chunk_spans(blob, header_len())[1]
    with pytest.raises(SealedFileError, match="^chunk 1 failed authentication"):
        unseal(blob[:s1] + blob[e1:])


def test_drop_final_chunk() -> None:
    blob = seal(os.urandom(3 * CS + 5))
    s_last = chunk_spans(blob, header_len())[-1][0]
    with pytest.raises(SealedFileError, match="^truncated: missing final chunk"):
        unseal(blob[:s_last])


def test_splice_chunk_from_other_file_same_key() -> None:
    a, b = seal(os.urandom(2 * CS + 1)), seal(os.urandom(2 * CS + 1))
    sa, _, ea = chunk_spans(a, header_len())[1]
    sb, _, eb = chunk_spans(b, header_len())[1]
    with pytest.raises(SealedFileError, match="^chunk 1 failed authentication"):
        unseal(a[:sa] + b[sb:eb] + a[ea:])


def test_truncate_at_every_chunk_boundary() -> None:
    blob = seal(os.urandom(3 * CS + 5))
    spans = chunk_spans(blob, header_len())
    for start, _, _ in spans:
        with pytest.raises(SealedFileError, match="^truncated: missing final chunk"):
            unseal(blob[:start])


def test_truncate_mid_chunk() -> None:
    blob = seal(os.urandom(3 * CS + 5))
    for start, ct, end in chunk_spans(blob, header_len()):
        for cut in (start + 1, start + 4, ct, ct + 10, end - 16, end - 1):
            with pytest.raises(SealedFileError, match="^truncated: chunk .* cut short"):
                unseal(blob[:cut])


def test_truncate_exact_multiple_file_at_last_boundary() -> None:
    # with an exact multiple of the chunk size, the final chunk is a full one, not an empty extra
    blob = seal(os.urandom(2 * CS))
    spans = chunk_spans(blob, header_len())
    assert len(spans) == 2
    with pytest.raises(SealedFileError, match="^truncated: missing final chunk"):
        unseal(blob[: spans[1][0]])


def test_truncate_inside_header() -> None:
    blob = seal(b"data")
    for cut in (9, 20, 50, header_len() - 1):
        with pytest.raises(SealedFileError, match="not a sealed file|tampered header"):
            unseal(blob[:cut])


@pytest.mark.parametrize("extra", [b"\x00", b"junk" * 100])
@pytest.mark.parametrize("size", [0, CS, 2 * CS + 1])
def test_trailing_data(extra: bytes, size: int) -> None:
    blob = seal(os.urandom(size))
    with pytest.raises(SealedFileError, match="^trailing data after final chunk$"):
        unseal(blob + extra)


def test_trailing_copy_of_final_chunk() -> None:
    blob = seal(os.urandom(CS + 1))
    s, _, e = chunk_spans(blob, header_len())[-1]
    with pytest.raises(SealedFileError, match="^trailing data after final chunk$"):
        unseal(blob + blob[s:e])


def test_final_chunk_plaintext_withheld_when_trailing_data() -> None:
    data = os.urandom(CS + 9)
    r = SealedReader(io.BytesIO(seal(data) + b"x"), KEY)
    assert r.read_chunk() == data[:CS]
    with pytest.raises(SealedFileError, match="trailing"):
        r.read_chunk()


def test_aborted_writer_reads_as_truncated() -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError), SealedWriter(buf, KEY, label=LABEL, chunk_size=CS) as w:
        w.write(os.urandom(3 * CS))
        raise RuntimeError("boom")
    assert w.closed
    with pytest.raises(ValueError):
        w.write(b"more")
    with pytest.raises(SealedFileError, match="^truncated: missing final chunk"):
        unseal(buf.getvalue())


# -- files and atomic replacement -------------------------------------------------------------


def test_seal_file_and_open_sealed(tmp_path: Path) -> None:
    path = tmp_path / "m.sealed"
    data = os.urandom(5000)
    size = seal_file(path, KEY, (data[i : i + 333] for i in range(0, len(data), 333)), label=LABEL, chunk_size=1024)
    assert size == path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with open_sealed(path, KEY, label=LABEL) as r:
        assert r.read() == data
    assert read_sealed_bytes(path, KEY) == data
    seal_file(path, KEY, b"single bytes object", label=LABEL)
    assert read_sealed_bytes(path, KEY) == b"single bytes object"
    assert [p.name for p in tmp_path.iterdir()] == ["m.sealed"]


def test_open_sealed_closes_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "m.sealed"
    seal_file(path, KEY, [b"x"], label=LABEL)
    with pytest.raises(SealedFileError):
        open_sealed(path, OTHER_KEY)
    with pytest.raises(FileNotFoundError):
        open_sealed(tmp_path / "missing", KEY)


def _assert_only(tmp_path: Path, name: str, expected: bytes) -> None:
    assert [p.name for p in tmp_path.iterdir()] == [name], "temporary file left behind"
    assert read_sealed_bytes(tmp_path / name, KEY) == expected


def test_crash_in_data_iterator_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "m.sealed"
    seal_file(path, KEY, [b"version one"], label=LABEL)

    def failing() -> Iterator[bytes]:
        yield os.urandom(5000)
        raise RuntimeError("producer crashed")

    with pytest.raises(RuntimeError, match="producer crashed"):
        seal_file(path, KEY, failing(), label=LABEL, chunk_size=1024)
    _assert_only(tmp_path, "m.sealed", b"version one")


def test_crash_at_replace_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.sealed"
    seal_file(path, KEY, [b"version one"], label=LABEL)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(sealed.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        seal_file(path, KEY, [b"version two"], label=LABEL)
    monkeypatch.undo()
    _assert_only(tmp_path, "m.sealed", b"version one")


def test_crash_at_fsync_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.sealed"
    seal_file(path, KEY, [b"version one"], label=LABEL)

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sealed.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        seal_file(path, KEY, [b"version two"], label=LABEL)
    monkeypatch.undo()
    _assert_only(tmp_path, "m.sealed", b"version one")


def test_killed_process_leaves_previous_file_and_only_ciphertext(tmp_path: Path) -> None:
    """A hard kill mid-write (no cleanup possible): the old file is intact, the temp file is ciphertext."""
    path = tmp_path / "m.sealed"
    seal_file(path, KEY, [b"version one"], label=LABEL)
    marker = b"PLAINTEXT-MARKER-IN-KILLED-WRITE"
    script = textwrap.dedent(
        f"""
        import os
        from tdxfl.store.sealed import seal_file
        def data():
            for _ in range(50):
                yield {marker!r} * 1000
            os._exit(9)  # simulated power loss: no exception handling, no cleanup
        seal_file({str(path)!r}, {KEY!r}, data(), label={LABEL!r}, chunk_size=4096)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    assert read_sealed_bytes(path, KEY) == b"version one"
    leftovers = [p for p in tmp_path.iterdir() if p.name != "m.sealed"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".m.sealed.")
    raw = leftovers[0].read_bytes()
    assert len(raw) > 100_000 and marker not in raw
    with pytest.raises(SealedFileError, match="truncated"):
        read_sealed_bytes(leftovers[0], KEY)


# -- large payload, bounded memory ------------------------------------------------------------

LARGE = 100 * (1 << 20)  # 104,857,600 bytes
BLOCK = 1 << 20


def _large_blocks() -> Iterator[bytes]:
    base = hashlib.sha256(b"seed").digest() * (BLOCK // 32)
    for i in range(LARGE // BLOCK):
        yield i.to_bytes(8, "little") + base[8:]


def test_large_streaming_round_trip_bounded_memory(tmp_path: Path) -> None:
    """Seal and unseal 100 MiB through the streaming API; traced peak memory stays O(chunk size).

    tracemalloc sees every Python-level allocation (bytes, bytearray, numpy buffers), which is
    where a whole-payload copy would show up; the limit is 16 MiB, against a 100 MiB payload.
    """
    path = tmp_path / "big.sealed"
    expected = hashlib.sha256()
    for block in _large_blocks():
        expected.update(block)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base_current, _ = tracemalloc.get_traced_memory()
        seal_file(path, KEY, _large_blocks(), label=LABEL)
        _, seal_peak = tracemalloc.get_traced_memory()

        tracemalloc.reset_peak()
        got = hashlib.sha256()
        total = 0
        with open_sealed(path, KEY, label=LABEL) as reader:
            for piece in reader:
                got.update(piece)
                total += len(piece)
        _, open_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert total == LARGE
    assert got.digest() == expected.digest()
    assert path.stat().st_size == header_len() + 100 * (5 + BLOCK + 16)
    limit = 16 << 20
    assert seal_peak - base_current < limit, f"sealing peaked at {(seal_peak - base_current) / 2**20:.1f} MiB"
    assert open_peak - base_current < limit, f"unsealing peaked at {(open_peak - base_current) / 2**20:.1f} MiB"


class _ShortWriter(io.RawIOBase):
    """A raw stream that accepts at most 7 bytes per write call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        piece = bytes(memoryview(b)[:7])  # type: ignore[arg-type]
        self.data += piece
        return len(piece)


def test_short_writes_are_completed() -> None:
    raw = _ShortWriter()
    data = os.urandom(3 * CS + 11)
    with SealedWriter(raw, KEY, label=LABEL, chunk_size=CS) as w:  # type: ignore[arg-type]
        w.write(data)
    assert unseal(bytes(raw.data)) == data


def test_readinto_never_leaves_unauthenticated_plaintext(tmp_path: Path) -> None:
    """Whole chunks are decrypted straight into the caller's buffer; a forged chunk is wiped."""
    key = bytes(range(32))
    path = tmp_path / "x.sealed"
    payload = bytes([7]) * (4096 * 3 + 2048)
    seal_file(path, key, payload, label="t", chunk_size=4096)
    raw = bytearray(path.read_bytes())
    raw[-30] ^= 1  # inside the final (partial) chunk's ciphertext
    path.write_bytes(bytes(raw))
    buffer = bytearray(len(payload) + 4096)
    with open_sealed(path, key) as reader:
        with pytest.raises(SealedFileError, match="chunk 3 failed authentication"):
            reader.readinto(buffer)
        assert buffer[: 3 * 4096] == payload[: 3 * 4096] and buffer[3 * 4096 :] == bytes(len(buffer) - 3 * 4096)
        with pytest.raises(SealedFileError, match="^an earlier read from this sealed file failed$"):
            reader.readinto(buffer)


# -- readinto: reads not aligned to chunks, forged chunks, truncation ------------------------

PCS = 1 << 16  # chunk size of these tests
READ_SIZES = [3 * PCS + 5, 17, PCS, 2 * PCS - 1, 1, 5 * PCS]  # mostly not aligned to chunks


def nonzero_bytes(size: int) -> bytes:
    """Random bytes without a zero, so zeroed regions of a buffer stand out."""
    return os.urandom(size).replace(b"\0", b"\1")


def read_pattern(reader: SealedReader, out: memoryview) -> int:
    """readinto ``out`` in the sizes of READ_SIZES, over and over; return the bytes read."""
    got = 0
    for i in range(len(out)):
        size = READ_SIZES[i % len(READ_SIZES)]
        n = reader.readinto(out[got : got + size])
        if not n:
            break
        got += n
    return got


def test_readinto_unaligned_reads(tmp_path: Path) -> None:
    payload = nonzero_bytes(11 * PCS + 1234)
    path = tmp_path / "x.sealed"
    seal_file(path, KEY, payload, label=LABEL, chunk_size=PCS)
    for source in (path, io.BytesIO(path.read_bytes())):  # a regular file, and an in-memory stream
        out = bytearray(len(payload) + 7)
        with open(source, "rb") if isinstance(source, Path) else source as f, SealedReader(f, KEY) as reader:
            assert read_pattern(reader, memoryview(out)) == len(payload)
            assert reader.at_end and reader.readinto(out) == 0
        assert out[: len(payload)] == payload


def test_readinto_mixed_with_read_and_iteration(tmp_path: Path) -> None:
    payload = nonzero_bytes(6 * PCS + 99)
    path = tmp_path / "x.sealed"
    seal_file(path, KEY, payload, label=LABEL, chunk_size=PCS)
    with open_sealed(path, KEY) as reader:
        head = reader.read(10)
        middle = bytearray(3 * PCS)
        assert reader.readinto(middle) == len(middle)
        rest = b"".join(reader)
    assert head + bytes(middle) + rest == payload


def test_reader_starts_at_the_file_position(tmp_path: Path) -> None:
    payload = nonzero_bytes(4 * PCS + 5)
    path = tmp_path / "x.bin"
    path.write_bytes(b"prefix" + seal(payload, chunk_size=PCS))
    with open(path, "rb") as f:
        f.seek(6)
        reader = SealedReader(f, KEY)
        out = bytearray(len(payload))
        assert reader.readinto(out) == len(payload) and out == payload and reader.at_end
        assert f.tell() == path.stat().st_size  # the chunks were read through the file object


@pytest.mark.parametrize("forged", range(9))
def test_readinto_forged_chunk_leaves_no_plaintext(tmp_path: Path, forged: int) -> None:
    """A forged chunk anywhere: the error names it, nothing from it on is left in the caller's
    buffer, what readinto returned before is intact, and the reader stays failed."""
    payload = nonzero_bytes(8 * PCS + 1000)  # 9 chunks, the last one partial
    path = tmp_path / "x.sealed"
    seal_file(path, KEY, payload, label=LABEL, chunk_size=PCS)
    _, ciphertext, _ = chunk_spans(path.read_bytes(), header_len())[forged]
    path.write_bytes(flip(path.read_bytes(), ciphertext + 100))
    out = bytearray(len(payload))
    view = memoryview(out)
    returned = 0
    with open_sealed(path, KEY) as reader:
        with pytest.raises(SealedFileError, match=f"^chunk {forged} failed authentication"):
            for size in READ_SIZES * 10:
                returned += reader.readinto(view[returned : returned + size])
        with pytest.raises(SealedFileError, match="earlier read"):
            reader.read()
    assert out[: forged * PCS] == payload[: forged * PCS]  # what readinto returned, and what the failing call
    assert out[forged * PCS :] == bytes(len(out) - forged * PCS)  # wrote from the chunks before the forged one


def test_readinto_truncation_and_trailing_data(tmp_path: Path) -> None:
    payload = nonzero_bytes(6 * PCS + 10)
    blob = seal(payload, chunk_size=PCS)
    spans = chunk_spans(blob, header_len())
    path = tmp_path / "x.sealed"
    for damaged, expected, intact in [
        (blob[: spans[4][1] + 50], "^truncated: chunk 4 is cut short", 4 * PCS),
        (blob[: spans[-1][0]], "^truncated: missing final chunk", 6 * PCS),
        (blob + b"x", "^trailing data after final chunk$", 6 * PCS),  # the final chunk's plaintext is wiped
    ]:
        path.write_bytes(damaged)
        out = bytearray(len(payload))
        with open_sealed(path, KEY) as reader, pytest.raises(SealedFileError, match=expected):
            reader.readinto(out)
        assert out[:intact] == payload[:intact] and out[intact:] == bytes(len(out) - intact)
