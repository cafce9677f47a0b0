"""Which task a federation trains, and each party's local data for it."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tdxfl.attestation.code_identity import TaskFile, task_digest, task_files
from tdxfl.config import Federation
from tdxfl.engine.model import ModelAdapter
from tdxfl.errors import ConfigError
from tdxfl.ml.task import LocalSamples, Shard, Task, builtin_task, load_task

__all__ = ["checkpoint_meta", "local_data", "locate_task", "measure_task", "open_task", "resolve_task"]


def _task_spec(federation: Federation) -> str:
    t = federation.training
    return t.task or builtin_task(t.model, t.dataset, t.framework)


def locate_task(spec: str, base_dir: Path) -> Path:
    """Where task ``spec``'s code is (a ``.py`` file, or a package's folder), found without running
    it: a path relative to ``base_dir``, or a module name. ConfigError when there is none."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
        if not path.is_file():
            raise ConfigError(f"training.task: no file {path}")
        return path.resolve()
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        raise ConfigError(f"training.task: no module named {spec!r}")
    origin = Path(found.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def measure_task(federation: Federation) -> list[TaskFile]:
    """The federation's task code, read once: what its digest covers and what will run."""
    return task_files(locate_task(_task_spec(federation), federation.base_dir))


def resolve_task(federation: Federation, party: str, files: Sequence[TaskFile]) -> Task:
    """The federation's task (``training.task``, or the built-in one for ``model`` / ``dataset``
    / ``framework``) run from exactly ``files`` (its measured code), naming ``party`` in errors."""
    return load_task(_task_spec(federation), [(f.name, f.path, f.content) for f in files]).for_party(party)


def open_task(spec: str, base_dir: Path) -> tuple[Task, bytes]:
    """Task ``spec`` (a ``.py`` path relative to ``base_dir``, or a module) from one read of its
    files, and their digest (e.g. for ``tdxfl unseal --task``)."""
    files = task_files(locate_task(spec, base_dir))
    return load_task(spec, [(f.name, f.path, f.content) for f in files]), task_digest(files)


def local_data(federation: Federation, task: Task, party: str) -> LocalSamples:
    """Party ``party``'s own data, from its data location; a built-in task also gets the
    simulation shard (worker ``i`` of ``n`` of one data set, ``training.partition``)."""
    t = federation.training
    shard = None
    if task.supports_shards:
        workers = [w.name for w in federation.workers]
        index = workers.index(party) if party in workers else 0
        shard = Shard(index, len(workers), t.partition, t.dirichlet_alpha, t.seed)
    return task.load_data(federation.party_data(party), federation.party(party).role, shard)


def checkpoint_meta(task: Task, adapter: ModelAdapter, samples: LocalSamples) -> dict[str, Any]:
    """What a sealed checkpoint records about the model, so the trusted node can rebuild it."""
    num_classes = getattr(task.module, "NUM_CLASSES", None) or int(samples.y.max()) + 1
    framework = {"KerasAdapter": "keras", "TorchAdapter": "torch"}.get(type(adapter).__name__, "custom")
    return {
        "task": task.name,
        "model": str(getattr(task.module, "MODEL", "")),
        "framework": framework,
        "input_shape": [int(d) for d in samples.x.shape[1:]],
        "num_classes": int(num_classes),
    }
