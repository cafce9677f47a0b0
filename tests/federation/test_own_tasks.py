"""A user's own task end to end, each party a separate process reading only its own file: the
Keras and the PyTorch (with batch normalisation) examples as a user runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtools import free_port
from tdxfl.store.keys import derive_store_key
from tdxfl.store.model_store import SealedFileStore
from tdxfl.wiring.tasks import open_task
from tdxfl.wiring.unseal import unseal_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "test-only development secret"
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "TF_CPP_MIN_LOG_LEVEL": "3", "TDXFL_MODEL_SECRET": SECRET}


def copy_example(name: str, tmp_path: Path) -> Path:
    """The example folder in ``tmp_path``, its PS on free ports (the parties are other processes)."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder)
    fed = folder / "federation.toml"
    ports = [free_port() for _ in range(3)]
    text = fed.read_text().replace(
        'address = "127.0.0.1:7451"',
        f'address = "127.0.0.1:{ports[0]}"\nenroll_address = "127.0.0.1:{ports[1]}"\ndata_address = "127.0.0.1:{ports[2]}"',
    )
    fed.write_text(text)
    return fed


def run_parties(fed: Path, *extra: str) -> dict[str, subprocess.CompletedProcess[str]]:
    cmds = {
        "ps": ["ps", "-f", str(fed), "--no-live", *extra],
        "site-a": ["worker", "-f", str(fed), "--name", "site-a", *extra],
        "site-b": ["worker", "-f", str(fed), "--name", "site-b", *extra],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tdxfl", *args],
            env=ENV,
            cwd=fed.parent,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name, args in cmds.items()
    }
    out = {}
    try:
        for name, p in procs.items():
            stdout, _ = p.communicate(timeout=240)
            out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return out


def worker_samples(fed: Path, name: str, federation: str) -> int:
    key = derive_store_key(SECRET, f"{federation}/model-store")
    store = SealedFileStore(fed.parent / "runs" / name / "sealed", key, label="worker-state")
    (log,) = [n for n in store.list() if n.startswith("training-log-")]  # one run: one log
    _, meta = store.load(log)
    return int(meta["samples"])


@pytest.mark.parametrize("example", ["keras-own-task", "torch-own-task"])
def test_own_task_trains_each_site_on_its_own_file(example: str, tmp_path: Path) -> None:
    fed = copy_example(example, tmp_path)
    out = run_parties(fed)
    for name, proc in out.items():
        assert proc.returncode == 0, f"{name}: {proc.stdout[-3000:]}"
    result = json.loads((fed.parent / "runs" / "ps" / "result.json").read_text())
    assert result["rounds"] == 5 and result["accuracy"] >= 0.9
    assert worker_samples(fed, "site-a", example) == 240  # site-a.csv, and only it
    assert worker_samples(fed, "site-b", example) == 160
    # the model owner rebuilds the task's own model from the sealed result, at the PS's accuracy
    task, _ = open_task("task.py", fed.parent)
    key = derive_store_key(SECRET, f"{example}/model-store")
    written = unseal_model(Path(result["checkpoint"]), key, tmp_path / "unsealed", task=task)
    x, y = task.load_data(str(fed.parent / "evaluation.csv"), "ps").evaluation()
    if "keras" in written:
        import keras

        scores = np.asarray(keras.saving.load_model(written["keras"])(x))
    else:
        import torch

        model = task.build_model()
        model.load_state_dict(torch.load(written["torch"]))
        model.eval()
        scores = model(torch.from_numpy(x)).detach().numpy()
    assert float((scores.argmax(axis=1) == y).mean()) == pytest.approx(result["accuracy"])
