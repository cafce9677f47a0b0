"""Which task a federation trains, and each party's local data for it."""

from __future__ import annotations

from typing import Any

from tdxfl.config import Federation
from tdxfl.engine.model import ModelAdapter
from tdxfl.ml.task import LocalSamples, Shard, Task, builtin_task, load_task

__all__ = ["checkpoint_meta", "local_data", "resolve_task"]


def resolve_task(federation: Federation, party: str) -> Task:
    """The federation's task (``training.task``, or the built-in one for ``model`` / ``dataset``
    / ``framework``), naming ``party`` in its errors."""
    t = federation.training
    spec = t.task or builtin_task(t.model, t.dataset, t.framework)
    return load_task(spec, federation.base_dir).for_party(party)


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
