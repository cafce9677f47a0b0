"""Tests for the sealed model store and the store-key derivation."""

from __future__ import annotations

import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tdxfl.engine.records import TensorSet
from tdxfl.errors import ConfigError, RecordError, SealedFileError, WrongKey
from tdxfl.store import sealed
from tdxfl.store.keys import derive_store_key
from tdxfl.store.model_store import ModelStore, SealedFileStore

KEY = os.urandom(32)


def weights(seed: int = 0) -> TensorSet:
    rng = np.random.default_rng(seed)
    return TensorSet.from_arrays(
        ["conv/kernel", "conv/bias", "head/kernel", "step"],
        [
            rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
            np.zeros(8, dtype=np.float32),
            rng.standard_normal((8, 10)),
            np.array(12, dtype=np.int64),
        ],
    )


def assert_same(a: TensorSet, b: TensorSet) -> None:
    assert a.specs == b.specs
    for x, y in zip(a.arrays, b.arrays):
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def store(tmp_path: Path) -> SealedFileStore:
    return SealedFileStore(tmp_path / "models", KEY)


def test_save_load_list_exists(store: SealedFileStore) -> None:
    assert isinstance(store, ModelStore)
    assert store.list() == [] and not store.exists("global")
    meta = {"round": 7, "accuracy": 0.91, "clients": ["a", "b"]}
    location = store.save("global", weights(0), meta)
    assert location == str(store.directory / "global.sealed")
    assert Path(location).is_file() and stat.S_IMODE(Path(location).stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    store.save("round-0001.ckpt", weights(1), {})
    assert store.list() == ["global", "round-0001.ckpt"]
    assert store.exists("global")
    ts, meta2 = store.load("global")
    assert_same(ts, weights(0))
    assert meta2 == meta
    ts, meta2 = store.load("round-0001.ckpt")
    assert_same(ts, weights(1))
    assert meta2 == {}
    # default metadata, replacement
    store.save("global", weights(2))
    ts, meta2 = store.load("global")
    assert_same(ts, weights(2))
    assert meta2 == {}
    store.delete("global")
    assert store.list() == ["round-0001.ckpt"]
    with pytest.raises(SealedFileError, match="no model named 'global'"):
        store.delete("global")


def test_list_ignores_temp_and_foreign_files(store: SealedFileStore) -> None:
    store.save("a", weights(), {})
    (store.directory / ".a.sealed.x1y2.tmp").write_bytes(b"partial")
    (store.directory / "notes.txt").write_text("hi")
    (store.directory / "sub.sealed").mkdir()
    assert store.list() == ["a"]


def test_load_missing(store: SealedFileStore) -> None:
    with pytest.raises(SealedFileError, match="no model named 'nope'") as info:
        store.load("nope")
    assert not isinstance(info.value, WrongKey)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../escape",
        "..",
        ".",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "-opt",
        "_x",
        "a\x00b",
        "caf\u00e9",
        "x" * 129,
        "a b",
    ],
)
def test_bad_names_refused(store: SealedFileStore, name: str) -> None:
    for call in (
        lambda: store.save(name, weights(), {}),
        lambda: store.load(name),
        lambda: store.exists(name),
        lambda: store.path_for(name),
    ):
        with pytest.raises(ConfigError, match="invalid model name"):
            call()
    assert list(store.directory.iterdir()) == []
    assert not (store.directory.parent / "escape.sealed").exists()


def test_invalid_name_is_a_config_error(store: SealedFileStore) -> None:
    with pytest.raises(ConfigError, match=r"invalid model name '\.\./x'"):
        store.save("../x", weights(), {})


def test_metadata_and_tensor_names_are_encrypted(store: SealedFileStore) -> None:
    secret_metric = "val_accuracy_secret_marker"
    meta = {secret_metric: 0.987654321, "participants": ["hospital-alpha-marker"]}
    ts = TensorSet.from_arrays(["layer_with_marker_name"], [np.full(1000, 7.25, dtype=np.float32)])
    raw = Path(store.save("m", ts, meta)).read_bytes()
    for marker in (secret_metric, "0.987654321", "hospital-alpha-marker", "layer_with_marker_name", "float32"):
        assert marker.encode() not in raw, marker
    assert np.full(16, 7.25, dtype=np.float32).tobytes() not in raw
    assert store.load("m")[1] == meta


def test_wrong_key_refused(store: SealedFileStore) -> None:
    store.save("m", weights(), {"a": 1})
    other = SealedFileStore(store.directory, os.urandom(32))
    with pytest.raises(WrongKey, match="wrong key or tampered header"):
        other.load("m")


def test_wrong_label_refused(store: SealedFileStore) -> None:
    store.save("m", weights(), {})
    other = SealedFileStore(store.directory, KEY, label="checkpoint")
    with pytest.raises(SealedFileError, match="key label 'model', expected 'checkpoint'"):
        other.load("m")


def test_renamed_file_refused(store: SealedFileStore) -> None:
    store.save("good", weights(), {})
    os.replace(store.path_for("good"), store.path_for("evil"))
    with pytest.raises(SealedFileError, match="does not hold model 'evil'"):
        store.load("evil")


def test_tampered_file_refused(store: SealedFileStore) -> None:
    store.save("m", weights(), {})
    path = store.path_for("m")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(SealedFileError, match="failed authentication"):
        store.load("m")
    path.write_bytes(bytes(raw[: len(raw) - 40]))
    with pytest.raises(SealedFileError, match="truncated"):
        store.load("m")


def test_authenticated_payload_that_is_not_a_tensor_set_refused(store: SealedFileStore) -> None:
    sealed.seal_file(store.path_for("m"), KEY, b"not a tensor set", label="model", metadata=store._header("m"))
    with pytest.raises(SealedFileError, match="m.sealed: authenticated payload is not a valid tensor set: "):
        store.load("m")


def test_truncated_at_chunk_boundary_refused(tmp_path: Path) -> None:
    store = SealedFileStore(tmp_path, KEY, chunk_size=256)
    store.save("m", weights(), {})
    path = store.path_for("m")
    raw = path.read_bytes()
    with sealed.open_sealed(path, KEY) as r:
        hlen = len(raw) - sum(5 + len(c) + 16 for c in r)
    path.write_bytes(raw[: hlen + 2 * (5 + 256 + 16)])
    with pytest.raises(SealedFileError, match="missing final chunk"):
        store.load("m")


def test_failed_save_keeps_previous_version(store: SealedFileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save("m", weights(0), {"v": 1})
    # metadata that cannot be encoded: the error comes from inside the streaming write
    with pytest.raises(RecordError):
        store.save("m", weights(1), {"bad": object()})
    # a spec/array mismatch deep in the tensor list
    broken = weights(1)
    broken.arrays[-1] = np.zeros(3)
    with pytest.raises(RecordError):
        store.save("m", broken, {})
    # crash at the rename
    monkeypatch.setattr(sealed.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        store.save("m", weights(2), {"v": 3})
    monkeypatch.undo()
    assert [p.name for p in store.directory.iterdir()] == ["m.sealed"]
    ts, meta = store.load("m")
    assert_same(ts, weights(0))
    assert meta == {"v": 1}


@pytest.mark.parametrize("bad", [b"", b"k" * 31, b"k" * 33])
def test_bad_store_key(tmp_path: Path, bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SealedFileStore(tmp_path, bad)


def test_large_model_memory_is_bounded(tmp_path: Path) -> None:
    """Saving adds O(chunk) memory on top of the model; loading allocates the arrays once."""
    rng = np.random.default_rng(1)
    big = TensorSet.from_arrays(
        ["embedding", "dense", "bias"],
        [
            rng.standard_normal((4096, 2048), dtype=np.float32),
            rng.standard_normal((2048, 2048), dtype=np.float32),
            np.ones(7),
        ],
    )
    nbytes = big.nbytes  # ~48 MiB
    store = SealedFileStore(tmp_path, KEY)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        store.save("big", big, {"round": 1})
        _, save_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loaded, meta = store.load("big")
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_same(loaded, big)
    assert meta == {"round": 1}
    slack = 16 << 20
    assert save_peak - base < slack, f"save peaked at {(save_peak - base) / 2**20:.1f} MiB extra"
    assert load_peak - base < nbytes + slack, f"load peaked at {(load_peak - base) / 2**20:.1f} MiB"


def test_load_tensors_spanning_many_chunks(tmp_path: Path) -> None:
    """Tensors spanning many chunks load intact; a forged chunk mid-tensor is refused."""
    rng = np.random.default_rng(2)
    model = TensorSet.from_arrays(
        ["a", "b", "c", "d"],
        [
            rng.standard_normal(300_001, dtype=np.float32),
            np.arange(7),
            rng.standard_normal((300, 500)),
            rng.standard_normal(3, dtype=np.float32),
        ],
    )
    store = SealedFileStore(tmp_path, KEY, chunk_size=1 << 16)
    store.save("m", model, {"round": 3})
    loaded, meta = store.load("m")
    assert_same(loaded, model)
    assert meta == {"round": 3}
    path = store.path_for("m")
    raw = bytearray(path.read_bytes())
    raw[len(raw) * 3 // 4] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(SealedFileError, match="failed authentication"):
        store.load("m")


# -- key derivation ---------------------------------------------------------------------------


def test_derive_store_key() -> None:
    k1 = derive_store_key("correct horse battery staple", "fed-1/server")
    assert isinstance(k1, bytes) and len(k1) == 32
    assert derive_store_key("correct horse battery staple", "fed-1/server") == k1
    assert derive_store_key(b"correct horse battery staple", "fed-1/server") == k1
    assert derive_store_key("correct horse battery staple", "fed-2/server") != k1
    assert derive_store_key("correct horse battery stapl3", "fed-1/server") != k1
    # NFC normalization: composed and decomposed e-acute give the same key
    assert derive_store_key("caf\u00e9", "ctx", n=1 << 14) == derive_store_key("cafe\u0301", "ctx", n=1 << 14)
    assert derive_store_key("x", "ctx", n=1 << 14) != derive_store_key("x", "ctx", n=1 << 15)


@pytest.mark.parametrize(
    ("secret", "context", "kwargs"),
    [
        ("", "ctx", {}),
        (b"", "ctx", {}),
        ("hunter2-secret", "", {}),
        ("hunter2-secret", "ctx", {"n": 1 << 10}),
        ("hunter2-secret", "ctx", {"n": 3 << 14}),
        ("hunter2-secret", "ctx", {"r": 0}),
        (1234, "ctx", {}),
    ],
)
def test_derive_store_key_rejects(secret: object, context: str, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError) as info:
        derive_store_key(secret, context, **kwargs)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)


def test_derived_key_drives_store(tmp_path: Path) -> None:
    key = derive_store_key("federation secret", "fed-1/worker-3")
    SealedFileStore(tmp_path, key).save("m", weights(), {"x": 1})
    again = SealedFileStore(tmp_path, derive_store_key("federation secret", "fed-1/worker-3"))
    assert again.load("m")[1] == {"x": 1}
    with pytest.raises(WrongKey, match="wrong key"):
        SealedFileStore(tmp_path, derive_store_key("federation secret", "fed-1/worker-4")).load("m")
