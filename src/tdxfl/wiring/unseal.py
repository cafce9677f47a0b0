"""Opening sealed models on the model owner's trusted node: authenticate and decode a sealed
checkpoint, rebuild the model, re-seal it under another key.

Used by ``tdxfl unseal`` / ``tdxfl export`` and by the demo's trusted node. The whole file is
authenticated before anything is written: a truncated or tampered file, or one sealed under
another key, is refused and leaves no output behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdxfl.engine.records import TensorSet
from tdxfl.errors import ConfigError, RecordError, SealedFileError, WrongKey
from tdxfl.files import atomic_write
from tdxfl.ml.task import Task
from tdxfl.store.model_store import SEALED_SUFFIX, SealedFileStore

__all__ = ["export_model", "load_sealed", "unseal_model"]


def load_sealed(sealed: Path, key: bytes, label: str = "checkpoint") -> tuple[TensorSet, dict[str, Any]]:
    """Authenticate and decode the sealed model file ``sealed`` (``<name>.sealed``) with ``key``.

    Raises WrongKey for a file sealed under another key, SealedFileError for a missing,
    truncated, tampered or renamed one, ConfigError for a name that is not ``<model>.sealed``.
    """
    if not sealed.name.endswith(SEALED_SUFFIX):
        raise ConfigError(f"{sealed} is not a sealed model file (expected a name ending in {SEALED_SUFFIX})")
    if not sealed.is_file():
        raise SealedFileError(f"{sealed} does not exist")
    name = sealed.name[: -len(SEALED_SUFFIX)]
    hint = "(the file is truncated, tampered with, or sealed under another key)"
    try:
        return SealedFileStore(sealed.parent, key, label=label).load(name)
    except WrongKey as e:
        raise WrongKey(f"refusing {sealed}: {e} {hint}") from None
    except SealedFileError as e:
        raise SealedFileError(f"refusing {sealed}: {e} {hint}") from None
    except ConfigError as e:
        raise ConfigError(f"refusing {sealed}: {e}") from None


def _write_keras(model: Any, target: Path) -> None:
    """Save a Keras model to ``target`` with :func:`tdxfl.files.atomic_write`.

    Keras saves only to a path ending in ``.keras``, so the model is saved into a private
    temporary directory beside ``target`` first and copied from there.
    """
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as scratch:
        saved = Path(scratch) / target.name
        model.save(saved)
        with saved.open("rb") as src, atomic_write(target) as out:
            shutil.copyfileobj(src, out)


def _model_params(
    meta: dict[str, Any], model: str | None, input_shape: Sequence[int] | None, num_classes: int | None
) -> tuple[str, tuple[int, ...], int]:
    name = model or meta.get("model")
    shape = input_shape or meta.get("input_shape")
    classes = num_classes or meta.get("num_classes")
    missing = [
        opt for opt, value in (("--model", name), ("--input-shape", shape), ("--num-classes", classes)) if not value
    ]
    if missing:
        raise ConfigError(f"the checkpoint metadata does not say; give {', '.join(missing)}")
    try:
        return str(name), tuple(int(d) for d in shape), int(classes)  # type: ignore[union-attr,arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"bad model parameters: input_shape={shape!r} num_classes={classes!r}") from None


def unseal_model(
    sealed: Path,
    key: bytes,
    out_dir: Path,
    *,
    model: str | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    label: str = "checkpoint",
    write_keras: bool = True,
    force: bool = False,
    task: Task | None = None,
) -> dict[str, Path]:
    """Unseal ``sealed`` into ``out_dir``/model.npz (and model.keras); return the written paths.

    With ``task`` (a user's task, :func:`tdxfl.ml.task.load_task`), its ``build_model()`` is the
    architecture: a Keras model is written as model.keras, a torch module's weights as model.pt
    (its ``state_dict``). Otherwise the built-in model comes from the checkpoint metadata
    (``model``, ``input_shape``, ``num_classes``) where present, else from the arguments (which
    take precedence). Nothing is
    written unless the file authenticates completely and the weights fit the rebuilt model.
    Raises what :func:`load_sealed` raises, ConfigError for missing or unusable model parameters
    or outputs in the way, RecordError when the weights do not fit the model.
    """
    tensors, meta = load_sealed(sealed, key, label)
    if task is not None and write_keras:
        return _unseal_task_model(tensors, task, out_dir, force=force)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    targets = {"npz": out_dir / "model.npz"}
    if write_keras:
        targets["keras"] = out_dir / "model.keras"
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    keras_model = None
    framework = meta.get("framework", "keras")
    if write_keras and framework != "keras":
        raise ConfigError(f"checkpoint was trained with {framework!r}, not Keras: use --npz-only for the weights")
    if write_keras:
        from tdxfl.ml.keras_adapter import KerasAdapter
        from tdxfl.ml.models import build_model

        name, shape, classes = _model_params(meta, model, input_shape, num_classes)
        try:
            keras_model = build_model(name, shape, classes)
            adapter = KerasAdapter(keras_model)
        except ValueError as e:  # build_model: an unknown model or unusable input shape
            raise ConfigError(str(e)) from None
        want = [(s.name, tuple(s.shape)) for s in adapter.specs()]
        got = [(s.name, tuple(s.shape)) for s in tensors.specs]
        if want != got:
            diff = next(((w, g) for w, g in zip(want, got) if w != g), None)
            raise RecordError(
                f"checkpoint weights do not fit model {name!r} with input shape {shape} and {classes} classes "
                f"({len(got)} tensors vs {len(want)} expected; first difference: {diff})"
            )
        adapter.set_weights(tensors.arrays)
    arrays = {spec.name: array for spec, array in zip(tensors.specs, tensors.arrays)}

    with atomic_write(targets["npz"]) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    if keras_model is not None:
        _write_keras(keras_model, targets["keras"])
    return targets


def _fit(adapter: Any, tensors: TensorSet, what: str) -> None:
    want = [(s.name, tuple(s.shape)) for s in adapter.specs()]
    got = [(s.name, tuple(s.shape)) for s in tensors.specs]
    if want != got:
        diff = next(((w, g) for w, g in zip(want, got) if w != g), None)
        raise RecordError(
            f"checkpoint weights do not fit {what} ({len(got)} tensors vs {len(want)} expected; first difference: {diff})"
        )
    adapter.set_weights(tensors.arrays)


def _unseal_task_model(tensors: TensorSet, task: Task, out_dir: Path, *, force: bool) -> dict[str, Path]:
    """Write the task's model with the unsealed weights (model.keras or model.pt) and model.npz."""
    built = task.build_model()
    targets = {"npz": out_dir / "model.npz"}
    roots = {c.__module__.split(".")[0] for c in type(built).__mro__}
    if "keras" in roots:
        targets["keras"] = out_dir / "model.keras"
    elif "torch" in roots:
        targets["torch"] = out_dir / "model.pt"
    else:
        raise ConfigError(f"task {task.name}: build_model() gave neither a Keras nor a torch model; use --npz-only")
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)} (use --force)")
    if "keras" in targets:
        from tdxfl.ml.keras_adapter import KerasAdapter

        _fit(KerasAdapter(built), tensors, f"task {task.name}'s model")
    else:
        import torch

        from tdxfl.ml.torch_adapter import TorchAdapter

        _fit(TorchAdapter(built), tensors, f"task {task.name}'s model")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_write(targets["npz"]) as f:
        np.savez(f, **{spec.name: array for spec, array in zip(tensors.specs, tensors.arrays)})  # type: ignore[arg-type]
    if "keras" in targets:
        _write_keras(built, targets["keras"])
    else:
        with atomic_write(targets["torch"]) as f:
            torch.save(built.state_dict(), f)
    return targets


def export_model(
    sealed: Path, key: bytes, to_key: bytes, out_dir: Path, *, label: str = "checkpoint", out_label: str | None = None
) -> Path:
    """Re-seal ``sealed`` (opened with ``key``) under ``to_key`` into ``out_dir``/<same name>.sealed."""
    tensors, meta = load_sealed(sealed, key, label)
    name = sealed.name[: -len(SEALED_SUFFIX)]
    target = SealedFileStore(out_dir, to_key, label=out_label or label)
    if target.path_for(name).resolve() == sealed.resolve():
        raise ConfigError("export would overwrite its input; choose another --out directory")
    return Path(target.save(name, tensors, meta))
