"""Data sets and federated partitioning (numpy only; no framework, no downloads).

* :func:`load_digits` -- scikit-learn's bundled 8x8 digits (always available offline).
* :func:`load_cifar10` -- the standard ``cifar-10-batches-py`` folder, read with a restricted
  unpickler that can only rebuild the numpy arrays those files hold.
* :func:`partition` -- split sample indices across workers, IID or label-skewed (Dirichlet).
* :func:`batches` -- an infinite, shuffled, fixed-size minibatch iterator.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "CIFAR10_URL",
    "Dataset",
    "UnsafePickleError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "partition",
]

#: where the CIFAR-10 "python version" archive can be downloaded (by a person, not by tdxfl)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


@dataclass
class Dataset:
    """A labelled train/test split held as numpy arrays.

    ``x_*`` are float32 with shape ``(N, *input_shape)``; ``y_*`` are int64 class ids of shape
    ``(N,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# digits


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled digits (1797 images of 8x8), scaled to [0, 1], shape (N, 8, 8, 1).

    The train/test split is stratified by label and reproducible for a given ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 8, 8, 1)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(
        x_train=np.ascontiguousarray(x_tr),
        y_train=np.ascontiguousarray(y_tr),
        x_test=np.ascontiguousarray(x_te),
        y_test=np.ascontiguousarray(y_te),
        num_classes=10,
        input_shape=(8, 8, 1),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the restricted unpickler does not allow."""


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild a plain numpy array.

    The CIFAR-10 python batches are dicts of byte strings, lists of ints and one uint8 array; the
    array is pickled as ``numpy.core.multiarray._reconstruct(numpy.ndarray, ...)`` with a
    ``numpy.dtype``. Every other global (``os.system``, ``builtins.eval``, ...) is refused before
    anything is called.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from a data file: only numpy array "
                "reconstruction is allowed (is this really a CIFAR-10 python batch?)"
            ) from None


def _restricted_load(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 pickles decoded with ``encoding='bytes'``) safely."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _missing_cifar(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CIFAR-10 not found: {what}. Put the python version of CIFAR-10 so that the files are "
        f"laid out as <path>/{_CIFAR_DIR}/data_batch_1 ... data_batch_5 and "
        f"<path>/{_CIFAR_DIR}/test_batch (path given: {path}). Get it from {CIFAR10_URL} and "
        f"unpack it with `tar xzf cifar-10-python.tar.gz -C <path>`; tdxfl never downloads it."
    )


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _restricted_load(file.read_bytes())
    if not isinstance(obj, dict):
        raise ValueError(f"{file}: expected a dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise ValueError(f"{file}: not a CIFAR-10 batch (needs b'data' array and b'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{file}: data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (data.shape[0],):
        raise ValueError(f"{file}: {y.shape[0]} labels for {data.shape[0]} images")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{file}: labels outside 0..9")
    # rows are 1024 red, 1024 green, 1024 blue values of a 32x32 image (row-major)
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x), y


def load_cifar10(path: str | Path) -> Dataset:
    """Load CIFAR-10 from the standard ``cifar-10-batches-py`` folder (the "python version").

    ``path`` may be that folder itself or its parent. Images come back float32 (N, 32, 32, 3),
    channels-last, scaled to [0, 1]. The pickled batches are read with a restricted unpickler.

    Raises:
        FileNotFoundError: the folder or one of its batch files is missing (the message says
            where to put them and where to get them).
        pickle.UnpicklingError: a file is not a plain CIFAR pickle (``UnsafePickleError`` if it
            asks for any global beyond numpy array reconstruction).
    """
    given = Path(path).expanduser()
    if (given / _CIFAR_DIR).is_dir():
        folder = given / _CIFAR_DIR
    elif given.is_dir() and (given.name == _CIFAR_DIR or (given / _CIFAR_TEST).exists()):
        folder = given
    elif not given.exists():
        raise _missing_cifar(given, f"{given} does not exist")
    else:
        raise _missing_cifar(given, f"no folder {given / _CIFAR_DIR}")
    for name in (*_CIFAR_TRAIN, _CIFAR_TEST):
        if not (folder / name).is_file():
            raise _missing_cifar(given, f"missing file {folder / name}")
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(folder / _CIFAR_TEST)
    return Dataset(
        x_train=np.concatenate([p[0] for p in parts]),
        y_train=np.concatenate([p[1] for p in parts]),
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        input_shape=(32, 32, 3),
    )


def load_dataset(name: str, path: str | Path | None = None, seed: int = 0) -> Dataset:
    """Load a data set by name: ``"digits"`` (seeded split) or ``"cifar10"`` (needs ``path``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key == "digits":
        return load_digits(seed=seed)
    if key == "cifar10":
        if path is None:
            raise ValueError(
                f"cifar10 needs a path to the {_CIFAR_DIR} folder (or its parent); "
                f"get the python version from {CIFAR10_URL}"
            )
        return load_cifar10(path)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits' or 'cifar10'")


# --------------------------------------------------------------------------------------------
# partitioning and batching


def partition(
    labels: np.ndarray,
    num_shards: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` into ``num_shards`` disjoint, non-empty shards.

    * ``"iid"``: a random permutation cut into near-equal parts.
    * ``"dirichlet"``: for each class, the shares of its samples per shard are drawn from
      ``Dirichlet(alpha, ..., alpha)``; smaller ``alpha`` means more label skew. Draws that leave
      a shard empty are retried; if that keeps happening, single samples are moved from the
      largest shards into the empty ones.

    Returns sorted int64 index arrays whose union is every sample exactly once.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    n = int(y.shape[0])
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)):
        raise ValueError(f"num_shards must be an int, got {num_shards!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards > n:
        raise ValueError(f"cannot split {n} samples into {num_shards} non-empty shards")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(s).astype(np.int64) for s in np.array_split(rng.permutation(n), num_shards)]
    if scheme != "dirichlet":
        raise ValueError(f"unknown partition scheme {scheme!r}; expected 'iid' or 'dirichlet'")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive number, got {alpha}")

    classes = np.unique(y)
    shards: list[list[np.ndarray]] = []
    for _attempt in range(100):
        shards = [[] for _ in range(num_shards)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(num_shards, float(alpha)))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].append(part)
        if all(sum(len(p) for p in s) > 0 for s in shards):
            break
    out = [np.concatenate(s).astype(np.int64) if s else np.empty(0, np.int64) for s in shards]
    # fix-up: give every empty shard one sample taken from the currently largest shard
    for k in range(num_shards):
        if out[k].size == 0:
            donor = int(np.argmax([len(s) for s in out]))
            pick = int(rng.integers(len(out[donor])))
            out[k] = out[donor][pick : pick + 1].copy()
            out[donor] = np.delete(out[donor], pick)
    return [np.sort(s) for s in out]
