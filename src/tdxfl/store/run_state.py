"""The parameter server's resumable run state, sealed in its checkpoint store.

One sealed model, ``run-state``, holds everything a restarted PS needs to go on where the last
completed round left it: the global weights, the strategy's server-side state (optimizer
moments, privacy budget spent), the model version, the per-round metrics so far, and the run's
identity (its id and the digest of the settings it started with). It is rewritten atomically
after every round, so a crash loses at most the round in progress.

Sealing authenticates the file, but cannot tell an older genuine file from the latest: the
caller reports every saved state's digest to an external ledger (the key broker) and checks a
loaded one against it (``tdxfl.wiring.ps``).

Files of one run never mix with another's: ``archive_run`` moves a finished or abandoned run's
files to ``previous-runs/<run id>/`` before a new run starts in the same working directory.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from tdxfl.engine.records import TensorSet, TensorSpec
from tdxfl.errors import ConfigError, RecordError, SealedFileError
from tdxfl.store.model_store import SealedFileStore

__all__ = [
    "PREVIOUS_RUNS",
    "RUN_FILES",
    "RUN_STATE",
    "RunState",
    "archive_run",
    "file_sha256",
    "load_run_state",
    "new_run_id",
    "run_files",
    "save_run_state",
]

#: the sealed model holding the run state, in the PS's checkpoint store
RUN_STATE: Final = "run-state"
#: where ``archive_run`` keeps earlier runs' files, under the working directory
PREVIOUS_RUNS: Final = "previous-runs"
#: the files and folders of one run in a PS's working directory
RUN_FILES: Final = (
    "checkpoints",
    "metrics.jsonl",
    "metrics.jsonl.sealed",
    "training.png",
    "training.png.sealed",
    "result.json",
)
_STRATEGY_PREFIX: Final = "strategy:"
_FORMAT: Final = "tdxfl/run-state+v1"


@dataclass
class RunState:
    """Where a run stands after its last completed round."""

    run_id: str
    #: the federation's training digest when the run started: a resumed run keeps its settings
    settings: str
    weights: TensorSet
    #: the model version ``weights`` are (the next one the PS publishes)
    version: int = 0
    #: each completed round's metrics (``RoundMetrics`` fields), in order
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: the strategy's server-side state (``Strategy.state()``)
    strategy: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: the run finished (every round, or the target accuracy): nothing to resume
    completed: bool = False

    @property
    def round(self) -> int:
        """Rounds completed."""
        return len(self.rounds)


def new_run_id(now: datetime) -> str:
    """A run id: the UTC start time (readable, sortable) and 32 random bits (unique)."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_run_state(store: SealedFileStore, state: RunState) -> str:
    """Seal ``state`` as ``run-state`` (atomically) and return the sealed file's SHA-256."""
    names = [s.name for s in state.weights.specs] + [_STRATEGY_PREFIX + k for k in state.strategy]
    arrays = list(state.weights.arrays) + [np.ascontiguousarray(a) for a in state.strategy.values()]
    meta = {
        "format": _FORMAT,
        "run_id": state.run_id,
        "settings": state.settings,
        "version": state.version,
        "rounds": state.rounds,
        "completed": state.completed,
        "model_tensors": len(state.weights.specs),
    }
    path = store.save(RUN_STATE, TensorSet.from_arrays(names, arrays), meta)
    return file_sha256(Path(path))


def load_run_state(store: SealedFileStore, specs: Sequence[TensorSpec]) -> tuple[RunState, str] | None:
    """The sealed run state and its file's SHA-256, or None when there is none. SealedFileError
    when it cannot be opened (tampered, wrong key) or does not hold a run state for a model of
    ``specs`` (the federation's model changed: start a new run)."""
    if not store.exists(RUN_STATE):
        return None
    sha = file_sha256(store.path_for(RUN_STATE))
    tensors, meta = store.load(RUN_STATE)
    if meta.get("format") != _FORMAT:
        raise SealedFileError(f"{RUN_STATE}.sealed is not a tdxfl run state")
    n = int(meta["model_tensors"])
    weights = TensorSet(tensors.specs[:n], tensors.arrays[:n])
    try:
        weights.check_compatible(specs)
    except RecordError as e:  # a different model
        raise ConfigError(
            f"the saved run {meta['run_id']} trained another model ({e}); start a new run with --fresh"
        ) from None
    strategy = {
        s.name.removeprefix(_STRATEGY_PREFIX): a for s, a in zip(tensors.specs[n:], tensors.arrays[n:], strict=True)
    }
    state = RunState(
        run_id=str(meta["run_id"]),
        settings=str(meta["settings"]),
        weights=weights,
        version=int(meta["version"]),
        rounds=list(meta["rounds"]),
        strategy=strategy,
        completed=bool(meta["completed"]),
    )
    return state, sha


def run_files(workdir: Path) -> list[Path]:
    """The files and folders of a run present in ``workdir``."""
    return [workdir / name for name in RUN_FILES if (workdir / name).exists()]


def archive_run(workdir: Path, run_id: str) -> Path | None:
    """Move the run files in ``workdir`` to ``previous-runs/<run_id>/`` (renames on one file
    system: nothing is copied or decrypted) and return that folder; None when there are none."""
    present = run_files(workdir)
    if not present:
        return None
    target = workdir / PREVIOUS_RUNS / run_id
    if target.exists():
        raise ConfigError(f"{target} exists already: move it away before starting a new run")
    target.mkdir(parents=True, mode=0o700)
    for path in present:
        os.replace(path, target / path.name)
    return target
