"""A task: the training code of a federation, as the user writes it.

A task is a Python module (importable by name, or a ``.py`` file) that defines:

* ``build_model()`` -> a ``keras.Model``, a ``torch.nn.Module`` or a :class:`ModelAdapter`; the
  framework is inferred from the type;
* ``load_data(path, role)`` -> this party's local data: ``(x, y)`` or ``(x, y, x_val, y_val)``
  numpy arrays, or a ``tf.data.Dataset`` / torch ``DataLoader`` of ``(x, y)`` batches. ``path``
  is the party's own data location (``[[party]] data`` or ``--data``), ``role`` is ``"ps"`` (its
  evaluation data) or ``"worker"``;
* optionally ``loss()`` -> the loss to train with (a Keras loss for Keras models; a callable
  ``(logits, labels) -> loss`` for torch), and ``OUTPUTS = "logits"`` or ``"probabilities"``
  (what the model's last layer gives; detected from the data when absent).

The built-in demos are tasks of exactly this kind in :mod:`tdxfl.ml.tasks`. Faults in user code
raise :class:`~tdxfl.errors.TaskError` naming the party, the task and the function.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tdxfl.engine.model import ModelAdapter
from tdxfl.errors import ConfigError, TaskError

__all__ = ["LocalSamples", "Shard", "Task", "builtin_task", "load_task"]

#: the most samples read from a tf.data.Dataset / DataLoader into memory
MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class Shard:
    """Simulation only (built-in tasks): this party's share of one data set split among workers."""

    index: int
    count: int
    scheme: str = "iid"  # or "dirichlet"
    alpha: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class LocalSamples:
    """A party's local data as numpy: training (or, for the PS, evaluation) samples and optional
    validation samples."""

    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def evaluation(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples to evaluate on: the validation split if there is one, else all."""
        if self.x_val is not None and self.y_val is not None:
            return self.x_val, self.y_val
        return self.x, self.y


def _as_arrays(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` numpy arrays from a pair of arrays, a tf.data.Dataset or a torch DataLoader."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        total = 0
        try:
            batches = iter(data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data)
        except TypeError:
            raise TaskError(
                f"{what} is neither arrays nor a dataset of (x, y) batches: {type(data).__name__}"
            ) from None
        for batch in batches:
            bx, by = batch
            bx = bx.numpy() if hasattr(bx, "numpy") else np.asarray(bx)
            by = by.numpy() if hasattr(by, "numpy") else np.asarray(by)
            xs.append(bx)
            ys.append(by)
            total += len(bx)
            if total > MAX_SAMPLES:
                raise TaskError(f"{what} yields more than {MAX_SAMPLES} samples")
        if not xs:
            raise TaskError(f"{what} is empty")
        x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) != len(y):
        raise TaskError(f"{what}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise TaskError(f"{what} has no samples")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TaskError(f"{what}: labels must be integer class ids, got {y.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _framework_of(model: object) -> str:
    roots = {c.__module__.split(".")[0] for c in type(model).__mro__}
    if "keras" in roots:
        return "keras"
    if "torch" in roots:
        return "torch"
    return ""


class Task:
    """A loaded task: its module and the party it runs for (named in every error)."""

    def __init__(self, name: str, module: ModuleType, party: str = "") -> None:
        self.name = name
        self.module = module
        self.party = party
        for required in ("build_model", "load_data"):
            if not callable(getattr(module, required, None)):
                raise TaskError(f"{self._who()}: the task defines no {required}() function")

    def _who(self) -> str:
        return f"{self.party + ': ' if self.party else ''}task {self.name}"

    def _call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.module, function)(*args, **kwargs)
        except TaskError:
            raise
        except Exception as e:
            shown = ", ".join(repr(a) for a in args)
            raise TaskError(f"{self._who()}: {function}({shown}) failed: {type(e).__name__}: {e}") from e

    def for_party(self, party: str) -> Task:
        """The same task, naming ``party`` in its errors."""
        return Task(self.name, self.module, party)

    @property
    def supports_shards(self) -> bool:
        """Whether ``load_data`` takes a ``shard`` (the built-in tasks' simulation option)."""
        return "shard" in inspect.signature(self.module.load_data).parameters

    def load_data(self, path: str, role: str, shard: Shard | None = None) -> LocalSamples:
        """This party's data as numpy (TaskError naming the fault)."""
        kwargs = {"shard": shard} if shard is not None else {}
        out = self._call("load_data", path, role, **kwargs)
        what = f"{self._who()}: load_data({path!r}, {role!r})"
        if isinstance(out, tuple) and len(out) == 4:
            x, y = _as_arrays((out[0], out[1]), what)
            x_val, y_val = _as_arrays((out[2], out[3]), f"{what} validation data")
            return LocalSamples(x, y, x_val, y_val)
        x, y = _as_arrays(out, what)
        return LocalSamples(x, y)

    def build_model(self) -> Any:
        """What the task's ``build_model()`` returns (TaskError naming the fault)."""
        return self._call("build_model")

    def build_adapter(self, sample: np.ndarray) -> ModelAdapter:
        """The task's model as a :class:`ModelAdapter`, the framework inferred from its type.

        What the model outputs (``OUTPUTS``) is checked on ``sample`` (a few of the party's
        inputs), or detected there when not declared: a Keras model without a compiled or task
        loss then trains with cross-entropy on logits or on probabilities, as it outputs.
        """
        model = self.build_model()
        if isinstance(model, ModelAdapter):
            return model
        loss = self._call("loss") if callable(getattr(self.module, "loss", None)) else None
        framework = _framework_of(model)
        if framework == "keras":
            import keras

            from tdxfl.ml.keras_adapter import KerasAdapter

            outputs = self._outputs_on(lambda x: np.asarray(model(x, training=False)), sample)
            compiled_loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
            chosen = loss or compiled_loss
            if chosen is None:
                chosen = keras.losses.SparseCategoricalCrossentropy(from_logits=outputs == "logits")
            try:
                return KerasAdapter(model, loss=chosen)
            except ValueError as e:
                raise TaskError(f"{self._who()}: build_model() gave an unusable Keras model: {e}") from e
        if framework == "torch":
            import torch

            from tdxfl.ml.torch_adapter import TorchAdapter

            def forward(x: np.ndarray) -> np.ndarray:
                model.eval()
                with torch.no_grad():
                    return np.asarray(model(torch.from_numpy(x)).numpy())

            if self._outputs_on(forward, sample) == "probabilities" and loss is None:
                raise TaskError(
                    f"{self._who()}: the torch model outputs probabilities, but training uses cross-entropy on "
                    "logits: return logits (drop the final softmax), or define loss()"
                )
            return TorchAdapter(model, loss=loss)
        raise TaskError(
            f"{self._who()}: build_model() returned a {type(model).__name__}; "
            "expected a keras.Model, a torch.nn.Module or a tdxfl ModelAdapter"
        )

    def _outputs_on(self, forward: Callable[[np.ndarray], np.ndarray], sample: np.ndarray) -> str:
        """``"logits"`` or ``"probabilities"``: declared by ``OUTPUTS`` (and checked) or detected
        from the model's outputs on ``sample``; TaskError when they disagree."""
        declared = getattr(self.module, "OUTPUTS", "")
        if declared not in ("", "logits", "probabilities"):
            raise TaskError(f"{self._who()}: OUTPUTS must be 'logits' or 'probabilities', got {declared!r}")
        try:
            out = np.asarray(forward(np.ascontiguousarray(sample[:16], dtype=np.float32)), dtype=np.float64)
        except Exception as e:
            raise TaskError(f"{self._who()}: the model fails on the task's data: {type(e).__name__}: {e}") from e
        if out.ndim != 2:
            raise TaskError(f"{self._who()}: the model must output (batch, classes) scores, got shape {out.shape}")
        probabilities = bool((out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
        if declared == "logits" and probabilities:
            raise TaskError(f"{self._who()}: OUTPUTS = 'logits', but the model's outputs are probabilities (softmax)")
        if declared == "probabilities" and not probabilities:
            raise TaskError(f"{self._who()}: OUTPUTS = 'probabilities', but the model's outputs do not sum to 1")
        return "probabilities" if probabilities else "logits"


class _Sources(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a task's modules from the bytes that were measured, never from the disk again
    (no ``.pyc``, no second read that could differ)."""

    def __init__(self, modules: dict[str, tuple[Path, bytes, bool]]) -> None:
        self.modules = modules  # module name -> (origin, source bytes, is a package)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in self.modules:
            return None
        origin, _, package = self.modules[name]
        spec = importlib.util.spec_from_loader(name, self, origin=str(origin), is_package=package)
        if spec is not None and package:
            spec.submodule_search_locations = [str(origin.parent)]
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        origin, source, _ = self.modules[module.__name__]
        module.__file__ = str(origin)
        exec(compile(source, str(origin), "exec", dont_inherit=True), module.__dict__)


def load_task(spec: str, sources: Sequence[tuple[str, Path, bytes]]) -> Task:
    """Run task ``spec`` from exactly ``sources``: its files as measured, ``(name, path, bytes)``
    with ``name`` the POSIX path relative to the task's root (``task.py``, or ``pkg/__init__.py``,
    ``pkg/model.py`` for a package). Only those bytes run: nothing is read from the disk again.
    TaskError when running the task module fails."""
    modules: dict[str, tuple[Path, bytes, bool]] = {}
    for name, path, content in sources:
        parts = name.removesuffix(".py").split("/")
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, content, package)
    single = len(sources) == 1 and not sources[0][0].endswith("__init__.py")
    if single:
        # a single file runs under the task's own name (a path spec gets a private one)
        only = next(iter(modules.values()))
        top = spec if not (spec.endswith(".py") or "/" in spec) else f"tdxfl_task_{Path(spec).stem}"
        modules = {top: only}
    else:
        top = min(modules, key=len)
    finder = _Sources(modules)
    for name in modules:
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module(top)
    except Exception as e:
        for name in modules:
            sys.modules.pop(name, None)
        raise TaskError(f"task {spec}: importing it failed: {type(e).__name__}: {e}") from e
    finally:
        sys.meta_path.remove(finder)
    return Task(spec, module)


def builtin_task(model: str, dataset: str, framework: str) -> str:
    """The built-in task (in :mod:`tdxfl.ml.tasks`) for the legacy ``training.model`` /
    ``dataset`` / ``framework`` keys; ConfigError when there is none."""
    from tdxfl.ml import tasks

    name = f"{dataset.lower().replace('-', '')}_{model}{'_torch' if framework == 'torch' else ''}"
    if name not in tasks.BUILTIN:
        raise ConfigError(
            f"no built-in task for model {model!r} on {dataset!r} with {framework}; have {sorted(tasks.BUILTIN)} "
            "(or name your own with training.task)"
        )
    return f"tdxfl.ml.tasks.{name}"
