"""Known-answer vectors for sealed files and sealed model checkpoints (``tests/data/kat/``).

Checkpoints and sealed metrics outlive the code that wrote them: the model owner unseals a
federation's result with whatever tdxfl is installed on the trusted node, maybe years later.
These tests pin the sealed-file format (README "Sealed files", ``store/sealed.py``) and the
sealed checkpoint's contents (``store/model_store.py`` + ``store/tensors_codec.py``) to bytes
committed once by ``tests/data/kat/make_vectors.py``, under the public test key 00 01 .. 1f:

* the committed files decode, with that key, to exactly the known payloads, chunking, headers,
  tensors and metadata, and a wrong key or label is refused;
* an independent decoder written from the documented layout reads them too, so the
  documentation and the bytes agree;
* writing the same input with the same salt (the only random input: ``os.urandom`` is
  replaced in the test) reproduces the committed bytes exactly, so a refactor that changes
  what new files look like fails here even if it can still read its own output.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tdxfl.engine.records import BFLOAT16, TensorSet
from tdxfl.store.model_store import SealedFileStore
from tdxfl.store.sealed import SealedFileError, open_sealed, read_sealed_bytes, seal_file

KAT = Path(__file__).resolve().parents[1] / "data" / "kat"
KEY = bytes(range(32))
WRONG_KEY = bytes(range(1, 33))

SINGLE = KAT / "sealed-single.sealed"
SINGLE_SALT = bytes([0x11]) * 32
SINGLE_PAYLOAD = b'{"round": 1, "accuracy": 0.5}\n{"round": 2, "accuracy": 0.75}\n'

MULTI = KAT / "sealed-multi.sealed"
MULTI_SALT = bytes([0x22]) * 32
MULTI_META = b'{"purpose":"kat","chunks":4}'
MULTI_PAYLOAD = bytes(range(50))

EMPTY = KAT / "sealed-empty.sealed"
EMPTY_SALT = bytes([0x33]) * 32

CHECKPOINT_DIR = KAT / "checkpoints"
CHECKPOINT = CHECKPOINT_DIR / "round-0003.sealed"
CHECKPOINT_SALT = bytes([0x44]) * 32
CHECKPOINT_HEADER = b'{"name":"round-0003","content":"tdxfl/tensor-set+v1"}'
CHECKPOINT_META = {
    "round": 3,
    "version": 12,
    "accuracy": 0.875,
    "loss": 0.3125,
    "model": "mlp",
    "framework": "keras",
    "input_shape": [8, 8, 1],
    "num_classes": 10,
}
KERNEL = np.array([[0.5, -1.25, 3.0], [0.125, -0.0, 1024.0]], dtype=np.float32)
BIAS = np.array([1.0, -2.5, 0.0078125], dtype=BFLOAT16)
STEP = np.array(1234567890123, dtype=np.int64)
#: the checkpoint's plaintext, spelled out: codec magic, u64 LE header length, JSON header, raw LE tensors
CODEC_HEADER = (
    b'{"version":1,"tensors":[{"name":"dense/kernel","dtype":"float32","shape":[2,3]},'
    b'{"name":"dense/bias","dtype":"bfloat16","shape":[3]},{"name":"step","dtype":"int64","shape":[]}],'
    b'"metadata":{"round":3,"version":12,"accuracy":0.875,"loss":0.3125,"model":"mlp","framework":"keras",'
    b'"input_shape":[8,8,1],"num_classes":10}}'
)
CHECKPOINT_PLAINTEXT = (
    b"TDXFLTS1"
    + struct.pack("<Q", len(CODEC_HEADER))
    + CODEC_HEADER
    + bytes.fromhex("0000003f0000a0bf000040400000003e0000008000008044")  # float32 LE
    + bytes.fromhex("803f20c0003c")  # bfloat16 LE
    + bytes.fromhex("cb04fb711f010000")  # int64 LE
)

#: SHA-256 of each committed vector: regenerating a vector (rather than keeping it) fails here
DIGESTS = {
    SINGLE: "350baf732a21582f7b69ecd14dbc5716b7135d0fa974a915b0cf9da372c31bef",
    MULTI: "94882d32212621232c2e2a689342d8bd86725c5f4826cc6ccc5cef1bd81a2bb0",
    EMPTY: "39b74b0cac4b5e1273e1704c9895dc59fd37a335134eaccb75b64f0782d661aa",
    CHECKPOINT: "8e3689f73d94751d388383bcf0203f35df77addd925f85ad8bc0351cd5ec3164",
}


@pytest.mark.parametrize("path", list(DIGESTS), ids=lambda p: p.name)
def test_committed_vectors_are_unchanged(path: Path) -> None:
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGESTS[path]


def test_single_chunk_file_decodes() -> None:
    with open_sealed(SINGLE, KEY, label="metrics") as reader:
        assert reader.label == "metrics"
        assert reader.metadata == b""
        assert reader.chunk_size == 1 << 20
        assert reader.file_id == SINGLE_SALT
        assert list(reader) == [SINGLE_PAYLOAD]
        assert reader.at_end
    assert read_sealed_bytes(SINGLE, KEY) == SINGLE_PAYLOAD


def test_multi_chunk_file_decodes_with_its_chunking_and_metadata() -> None:
    with open_sealed(MULTI, KEY, label="kat-multi") as reader:
        assert reader.metadata == MULTI_META
        assert reader.chunk_size == 16
        assert reader.file_id == MULTI_SALT
        assert list(reader) == [MULTI_PAYLOAD[0:16], MULTI_PAYLOAD[16:32], MULTI_PAYLOAD[32:48], MULTI_PAYLOAD[48:]]
    with open_sealed(MULTI, KEY) as reader:  # readinto across chunk boundaries
        buf = bytearray(64)
        assert reader.readinto(buf) == 50
        assert bytes(buf[:50]) == MULTI_PAYLOAD
        reader.verify_to_end()


def test_empty_file_decodes() -> None:
    with open_sealed(EMPTY, KEY, label="kat-empty") as reader:
        assert reader.file_id == EMPTY_SALT
        assert reader.read() == b""
        assert reader.at_end


def test_checkpoint_decodes_to_the_known_tensors_and_metadata() -> None:
    tensors, meta = SealedFileStore(CHECKPOINT_DIR, KEY, label="checkpoint").load("round-0003")
    assert [(s.name, s.dtype, s.shape) for s in tensors.specs] == [
        ("dense/kernel", "float32", (2, 3)),
        ("dense/bias", "bfloat16", (3,)),
        ("step", "int64", ()),
    ]
    for got, want in zip(tensors.arrays, (KERNEL, BIAS, STEP)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()  # bit-exact: -0.0 stays -0.0
    assert meta == CHECKPOINT_META
    assert isinstance(meta["round"], int) and isinstance(meta["accuracy"], float)


def test_checkpoint_plaintext_and_clear_header_are_the_documented_bytes() -> None:
    with open_sealed(CHECKPOINT, KEY, label="checkpoint") as reader:
        assert reader.metadata == CHECKPOINT_HEADER  # the only clear (authenticated) part: no metrics
        assert reader.read() == CHECKPOINT_PLAINTEXT
        reader.verify_to_end()


def test_unseal_command_reads_the_checkpoint() -> None:
    from tdxfl.wiring.unseal import load_sealed

    tensors, meta = load_sealed(CHECKPOINT, KEY)
    assert [a.tobytes() for a in tensors.arrays] == [KERNEL.tobytes(), BIAS.tobytes(), STEP.tobytes()]
    assert meta == CHECKPOINT_META


@pytest.mark.parametrize("path", [SINGLE, MULTI, EMPTY, CHECKPOINT], ids=lambda p: p.name)
def test_wrong_key_is_refused(path: Path) -> None:
    with pytest.raises(SealedFileError, match="wrong key"):
        read_sealed_bytes(path, WRONG_KEY)


def test_wrong_key_or_label_is_refused_for_the_checkpoint() -> None:
    with pytest.raises(SealedFileError, match="wrong key"):
        SealedFileStore(CHECKPOINT_DIR, WRONG_KEY, label="checkpoint").load("round-0003")
    with pytest.raises(SealedFileError, match="label"):
        SealedFileStore(CHECKPOINT_DIR, KEY, label="worker-state").load("round-0003")


# -- the documented layout, decoded without tdxfl's reader ------------------------------------
def _decode_by_the_spec(data: bytes, key: bytes) -> tuple[str, bytes, list[bytes]]:
    """(label, metadata, chunk plaintexts) read as the README / sealed.py docstring describe."""
    magic, version, salt, chunk_size, label_len = struct.unpack_from(">9sB32sIH", data, 0)
    assert (magic, version) == (b"TDXFLSEAL", 1)
    pos = 48
    label = data[pos : pos + label_len]
    pos += label_len
    (meta_len,) = struct.unpack_from(">I", data, pos)
    meta = data[pos + 4 : pos + 4 + meta_len]
    pos += 4 + meta_len
    body, tag = data[:pos], data[pos : pos + 16]
    pos += 16
    file_key = HKDF(hashes.SHA256(), 32, salt=salt, info=b"tdxfl sealed file v1" + label).derive(key)
    aead = AESGCM(file_key)
    assert aead.decrypt(b"\xff" * 12, tag, body) == b""  # header tag: empty message, AAD = header body
    header_hash = hashlib.sha256(body).digest()
    chunks = []
    index, final = 0, 0
    while not final:
        final, length = struct.unpack_from(">BI", data, pos)
        assert length == chunk_size or final
        pos += 5
        aad = header_hash + struct.pack(">QB", index, final)
        chunks.append(aead.decrypt(index.to_bytes(12, "big"), data[pos : pos + length + 16], aad))
        pos += length + 16
        index += 1
    assert pos == len(data)  # nothing after the final chunk
    return label.decode(), meta, chunks


def test_files_follow_the_documented_layout() -> None:
    assert _decode_by_the_spec(SINGLE.read_bytes(), KEY) == ("metrics", b"", [SINGLE_PAYLOAD])
    label, meta, chunks = _decode_by_the_spec(MULTI.read_bytes(), KEY)
    assert (label, meta, b"".join(chunks)) == ("kat-multi", MULTI_META, MULTI_PAYLOAD)
    assert [len(c) for c in chunks] == [16, 16, 16, 2]
    assert _decode_by_the_spec(EMPTY.read_bytes(), KEY) == ("kat-empty", b"", [b""])
    checkpoint = ("checkpoint", CHECKPOINT_HEADER, [CHECKPOINT_PLAINTEXT])
    assert _decode_by_the_spec(CHECKPOINT.read_bytes(), KEY) == checkpoint


# -- encode direction -------------------------------------------------------------------------
@pytest.fixture
def fix_salt(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], None]:
    """Make the writer's 32-byte salt draw return a given value (other draws stay random)."""

    def fix(salt: bytes) -> None:
        real = os.urandom
        monkeypatch.setattr(os, "urandom", lambda n: salt if n == len(salt) else real(n))

    return fix


def test_writer_reproduces_the_committed_files(tmp_path: Path, fix_salt: Callable[[bytes], None]) -> None:
    fix_salt(SINGLE_SALT)
    seal_file(tmp_path / "single", KEY, SINGLE_PAYLOAD, label="metrics")
    assert (tmp_path / "single").read_bytes() == SINGLE.read_bytes()
    fix_salt(MULTI_SALT)
    pieces = [MULTI_PAYLOAD[:7], MULTI_PAYLOAD[7:40], MULTI_PAYLOAD[40:]]  # chunking must not depend on write sizes
    seal_file(tmp_path / "multi", KEY, pieces, label="kat-multi", metadata=MULTI_META, chunk_size=16)
    assert (tmp_path / "multi").read_bytes() == MULTI.read_bytes()
    fix_salt(EMPTY_SALT)
    seal_file(tmp_path / "empty", KEY, b"", label="kat-empty")
    assert (tmp_path / "empty").read_bytes() == EMPTY.read_bytes()


def test_model_store_reproduces_the_committed_checkpoint(tmp_path: Path, fix_salt: Callable[[bytes], None]) -> None:
    fix_salt(CHECKPOINT_SALT)
    tensors = TensorSet.from_arrays(["dense/kernel", "dense/bias", "step"], [KERNEL, BIAS, STEP])
    path = SealedFileStore(tmp_path, KEY, label="checkpoint").save("round-0003", tensors, CHECKPOINT_META)
    assert Path(path).read_bytes() == CHECKPOINT.read_bytes()
