"""The task contract: loading the user's module, its data in every accepted form, the framework
inferred from the model, logits vs probabilities, and faults that name party, task and function."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from tdxfl.attestation.code_identity import digest_task
from tdxfl.errors import ConfigError, TaskError
from tdxfl.ml.keras_adapter import KerasAdapter
from tdxfl.ml.task import Task, builtin_task
from tdxfl.ml.torch_adapter import TorchAdapter
from tdxfl.wiring.tasks import open_task

X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)


def load_task(spec: str, base: Path) -> Task:
    return open_task(spec, base)[0]


def task_file(tmp_path: Path, body: str, name: str = "task.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


KERAS_MODEL = """
import keras
import numpy as np

def build_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3{activation})])
"""
DATA = """
def load_data(path, role):
    rng = np.random.default_rng(1)
    return rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
"""


def test_a_task_file_relative_to_the_federation_file_loads_and_names_its_files(tmp_path: Path) -> None:
    path = task_file(tmp_path, KERAS_MODEL.format(activation=', activation="softmax"') + DATA)
    task, digest = open_task("task.py", tmp_path)
    assert digest == digest_task(path)
    samples = task.for_party("site-a").load_data("", "worker")
    assert samples.x.dtype == np.float32 and samples.y.dtype == np.int64 and len(samples.x) == 20
    assert isinstance(task.build_adapter(samples.x), KerasAdapter)


def test_validation_split_and_datasets_are_accepted(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    task_file(tmp_path, KERAS_MODEL.format(activation="") + "\ndef load_data(path, role):\n    return DATA\n")
    task = load_task("task.py", tmp_path)
    x, y = np.ones((10, 4)), np.arange(10) % 3
    task.module.DATA = (x, y, x[:4], y[:4])
    samples = task.load_data("", "worker")
    assert len(samples.x) == 10 and samples.evaluation()[0].shape == (4, 4)
    task.module.DATA = DataLoader(TensorDataset(torch.ones(10, 4), torch.arange(10) % 3), batch_size=3)
    assert len(task.load_data("", "worker").x) == 10
    import tensorflow as tf

    task.module.DATA = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    assert task.load_data("", "worker").y.tolist() == y.tolist()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "def build_model():\n    raise RuntimeError('no GPU here')\n" + DATA,
            r"site-a: task task.py: build_model\(\) failed: RuntimeError: no GPU here",
        ),
        ("def build_model():\n    return object()\n" + DATA, "returned a object; expected a keras.Model"),
        (
            "def build_model():\n    pass\ndef load_data(path, role):\n    return [1, 2], [0.5, 1.5]\n",
            "labels must be integer class ids",
        ),
        (
            "def build_model():\n    pass\ndef load_data(path, role):\n    return [[1], [2]], [0]\n",
            "2 inputs but 1 labels",
        ),
        (
            "def build_model():\n    pass\ndef load_data(path, role):\n    open(path)\n",
            r"load_data\('missing.csv', 'worker'\) failed: FileNotFoundError",
        ),
    ],
)
def test_user_code_faults_name_party_task_and_function(tmp_path: Path, body: str, message: str) -> None:
    task_file(tmp_path, "import numpy as np\n" + body)
    task = load_task("task.py", tmp_path).for_party("site-a")
    with pytest.raises(TaskError, match=message):
        task.build_adapter(task.load_data("missing.csv", "worker").x)


def test_missing_task_and_missing_functions_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no file"):
        load_task("nothere.py", tmp_path)
    with pytest.raises(ConfigError, match="no module named 'no_such_task_module'"):
        load_task("no_such_task_module", tmp_path)
    task_file(tmp_path, "def build_model():\n    pass\n")
    with pytest.raises(TaskError, match=r"defines no load_data\(\)"):
        load_task("task.py", tmp_path)
    task_file(tmp_path, "import not_a_real_dependency\n", "broken.py")
    with pytest.raises(TaskError, match="importing it failed: ModuleNotFoundError"):
        load_task("broken.py", tmp_path)


def test_keras_logits_are_detected_and_trained_with_from_logits(tmp_path: Path) -> None:
    task_file(tmp_path, KERAS_MODEL.format(activation="") + DATA)
    adapter = load_task("task.py", tmp_path).build_adapter(X)
    assert getattr(adapter._loss_fn, "from_logits", None) is True


def test_declared_outputs_must_match_the_model(tmp_path: Path) -> None:
    task_file(tmp_path, KERAS_MODEL.format(activation=', activation="softmax"') + DATA + "OUTPUTS = 'logits'\n")
    with pytest.raises(TaskError, match="OUTPUTS = 'logits', but the model's outputs are probabilities"):
        load_task("task.py", tmp_path).build_adapter(X)


def test_torch_model_is_inferred_and_a_softmax_output_refused(tmp_path: Path) -> None:
    body = (
        "import torch\nimport numpy as np\ndef build_model():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3){tail})\n"
        + DATA
    )
    task_file(tmp_path, body.format(tail=""))
    assert isinstance(load_task("task.py", tmp_path).build_adapter(X), TorchAdapter)
    task_file(tmp_path, body.format(tail=", torch.nn.Softmax(dim=1)"), "soft.py")
    with pytest.raises(TaskError, match="outputs probabilities, but training uses cross-entropy on logits"):
        load_task("soft.py", tmp_path).build_adapter(X)


def test_builtin_tasks_for_the_legacy_keys() -> None:
    assert builtin_task("small_cnn", "digits", "keras") == "tdxfl.ml.tasks.digits_small_cnn"
    assert builtin_task("mlp", "digits", "torch") == "tdxfl.ml.tasks.digits_mlp_torch"
    with pytest.raises(ConfigError, match="no built-in task for model 'resnet50' on 'digits'"):
        builtin_task("resnet50", "digits", "keras")


def test_the_code_that_runs_is_the_code_that_was_measured(tmp_path: Path) -> None:
    """A planted bytecode file that Python's own importer would run instead of task.py (same
    recorded mtime and size) must not run: the task runs from the bytes its digest covers."""
    import importlib.util
    import os
    import py_compile
    import sys

    honest = KERAS_MODEL.format(activation=', activation="softmax"') + DATA
    path = task_file(tmp_path, honest)
    evil_source = honest.replace("def build_model():\n", "def build_model():\n    return 'evil'\n", 1)
    evil_source = (
        evil_source[: len(honest)]
        if len(evil_source) >= len(honest)
        else evil_source + "#" * (len(honest) - len(evil_source))
    )
    evil = tmp_path / "evil_src.py"
    evil.write_text(evil_source)
    assert evil.stat().st_size == path.stat().st_size
    os.utime(evil, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    cache = importlib.util.cache_from_source(str(path))
    py_compile.compile(str(evil), cfile=cache, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    # the attack is real: the standard importer runs the planted bytecode
    spec = importlib.util.spec_from_file_location("planted_check", path)
    assert spec is not None and spec.loader is not None
    planted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(planted)
    sys.modules.pop("planted_check", None)
    assert planted.build_model() == "evil"
    task, digest = open_task("task.py", tmp_path)
    assert digest == digest_task(path)
    assert task.build_model() != "evil"
