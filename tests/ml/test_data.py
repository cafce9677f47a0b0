"""Data sets, the restricted CIFAR unpickler, partitioning and batching (numpy only, fast)."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from tdxfl.engine.data import batches
from tdxfl.ml.data import (
    Dataset,
    UnsafePickleError,
    load_cifar10,
    load_dataset,
    load_digits,
    partition,
)

# ------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_split() -> None:
    d = load_digits(seed=0, test_fraction=0.2)
    assert isinstance(d, Dataset)
    assert d.x_train.shape == (1437, 8, 8, 1) and d.x_test.shape == (360, 8, 8, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.input_shape == (8, 8, 1) and d.num_classes == 10
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0 and d.x_train.max() > 0.9
    # stratified: every class appears in test with roughly its share
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38
    # reproducible, and seed-dependent
    again = load_digits(seed=0)
    np.testing.assert_array_equal(again.y_train, d.y_train)
    assert not np.array_equal(load_digits(seed=1).y_train, d.y_train)
    assert load_dataset("digits", seed=0).x_test.shape == (360, 8, 8, 1)


def test_load_dataset_bad_args() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


# ------------------------------------------------------------------------------------------
# CIFAR-10: fake batches laid out like the real (Python 2 cPickle, protocol 2) files


_PurePickler: Any = pickle._Pickler  # the pure-Python pickler (overridable opcodes)
_whichmodule: Any = pickle.whichmodule


class _Py2Pickler(_PurePickler):  # type: ignore[misc]
    """Writes pickles the way Python 2's cPickle wrote the CIFAR batches.

    str and bytes become Python 2 ``str`` (BINSTRING opcodes, which Python 3 reads back as bytes
    with ``encoding="bytes"``), and numpy globals use the old ``numpy.core`` module name.
    """

    dispatch: ClassVar[dict[type, Any]] = dict(_PurePickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = _whichmodule(obj, obj.__qualname__)
        module = module.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _fake_batch(n: int, seed: int, name: bytes) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {
        b"batch_label": b"training batch " + name,
        b"labels": labels,
        b"data": data,
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    return _py2_pickle(batch), data, np.asarray(labels)


def _write_fake_cifar(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        raw, data, labels = _fake_batch(n, seed=i, name=name.encode())
        (folder / name).write_bytes(raw)
        truth[name] = (data, labels)
    return truth


def test_fake_batch_has_python2_layout() -> None:
    raw, _, _ = _fake_batch(2, 0, b"x")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # as in the real files
    assert b"X\x00" not in raw[:20]  # no Python 3 unicode opcodes for the keys
    # the standard recipe from the CIFAR web page reads it
    d = pickle.loads(raw, encoding="bytes")
    assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}


def test_load_fake_cifar(tmp_path: Path) -> None:
    truth = _write_fake_cifar(tmp_path, n=4)
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or folder itself
        d = load_cifar10(where)
        assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)
        assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
        assert d.num_classes == 10 and d.input_shape == (32, 32, 3)
        data, labels = truth["data_batch_2"]
        np.testing.assert_array_equal(d.y_train[4:8], labels)
        # channel-last: pixel (row r, col c, channel ch) is data[ch*1024 + r*32 + c] / 255
        img = d.x_train[5]
        for r, c, ch in [(0, 0, 0), (3, 17, 1), (31, 31, 2), (10, 2, 2)]:
            assert img[r, c, ch] == pytest.approx(data[1, ch * 1024 + r * 32 + c] / 255.0)
        np.testing.assert_array_equal(d.y_test, truth["test_batch"][1])
        assert d.x_test.min() >= 0.0 and d.x_test.max() <= 1.0
    assert load_dataset("cifar10", path=tmp_path).x_train.shape[0] == 20


class _Boom:
    """Pickles to ``os.system(<command that would create a marker file>)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_malicious_batch(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _write_fake_cifar(tmp_path / "c", n=2)
    evil = pickle.dumps({b"data": _Boom(marker), b"labels": [0]}, protocol=4)
    assert b"system" in evil  # really calls os.system (posix.system) when unpickled
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").write_bytes(evil)
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_cifar10(tmp_path / "c")
    assert not marker.exists()
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").write_bytes(_fake_batch(2, 0, b"3")[0])
    # other classic gadgets are refused too, in any protocol
    for proto in (2, 4, 5):
        evil2 = pickle.dumps({b"data": _Boom(marker)}, protocol=proto)
        (tmp_path / "c" / "cifar-10-batches-py" / "test_batch").write_bytes(evil2)
        with pytest.raises(pickle.UnpicklingError):
            load_cifar10(tmp_path / "c")
    builtins_eval = b"cbuiltins\neval\n(S'1+1'\ntR."
    (tmp_path / "c" / "cifar-10-batches-py" / "test_batch").write_bytes(builtins_eval)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_cifar10(tmp_path / "c")
    assert not marker.exists()


def test_cifar_wrong_content_is_rejected(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(_py2_pickle([1, 2, 3]))
    with pytest.raises(ValueError, match="expected a dict"):
        load_cifar10(tmp_path)


def test_missing_cifar_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        load_cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert "cifar-10-batches-py/data_batch_1" in msg
    assert "cifar-10-python.tar.gz" in msg and "https://" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)  # exists but holds no CIFAR folder
    _write_fake_cifar(tmp_path, n=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        load_cifar10(tmp_path)


# ------------------------------------------------------------------------------------------
# partitioning


def _check_cover(shards: list[np.ndarray], n: int) -> None:
    assert all(len(s) > 0 for s in shards)
    allidx = np.concatenate(shards)
    assert len(allidx) == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def _skew(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    """Mean total-variation distance between shard label mixes and the global mix."""
    k = int(labels.max()) + 1
    glob = np.bincount(labels, minlength=k) / len(labels)
    tv = [0.5 * np.abs(np.bincount(labels[s], minlength=k) / len(s) - glob).sum() for s in shards]
    return float(np.mean(tv))


def test_partition_iid() -> None:
    y = np.repeat(np.arange(10), 50)
    shards = partition(y, 7, "iid", seed=3)
    assert len(shards) == 7
    _check_cover(shards, 500)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert _skew(y, shards) < 0.2
    again = partition(y, 7, "iid", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_partition_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    y = load_digits().y_train
    skews = []
    for alpha in (100.0, 1.0, 0.05):
        shards = partition(y, 10, "dirichlet", alpha=alpha, seed=0)
        assert len(shards) == 10
        _check_cover(shards, len(y))
        skews.append(_skew(y, shards))
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.15 and skews[2] > 0.5


def test_partition_dirichlet_never_leaves_a_shard_empty() -> None:
    y = np.repeat(np.arange(3), 4)  # 12 samples, 3 classes, tiny alpha: empties are likely
    for seed in range(20):
        shards = partition(y, 10, "dirichlet", alpha=0.01, seed=seed)
        _check_cover(shards, 12)


def test_partition_bad_args() -> None:
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="num_shards"):
        partition(y, 0)
    with pytest.raises(ValueError, match="non-empty"):
        partition(y, 11)
    with pytest.raises(ValueError, match="scheme"):
        partition(y, 2, "pathological")
    with pytest.raises(ValueError, match="alpha"):
        partition(y, 2, "dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="1-D"):
        partition(y.reshape(2, 5), 2)


# ------------------------------------------------------------------------------------------
# batches


def test_batches_fixed_size_and_epoch_cover() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10)
    it = batches(x, y, 4, seed=0)
    seen = [next(it) for _ in range(5)]  # 20 samples = 2 epochs
    assert all(bx.shape == (4, 1) and by.shape == (4,) for bx, by in seen)
    assert all(np.array_equal(bx[:, 0].astype(int), by) for bx, by in seen)
    ys = np.concatenate([by for _, by in seen])
    np.testing.assert_array_equal(np.sort(ys[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(ys[10:]), np.arange(10))
    big = next(batches(x, y, 25, seed=1))[1]
    assert big.shape == (25,)
    with pytest.raises(ValueError):
        next(batches(x[:0], y[:0], 4))
