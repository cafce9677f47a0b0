"""``tdxfl demo`` helpers: TF thread shares, and the trusted node's unseal + accuracy check."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from tdxfl.engine.kinds import Mode
from tdxfl.keybroker.keystore import Keystore
from tdxfl.ml.data import load_dataset
from tdxfl.ml.factory import make_adapter
from tdxfl.store.model_store import SealedFileStore
from tdxfl.wiring import demo

PASS = "test-only demo passphrase"


def test_tf_thread_env_shares_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    assert demo._tf_thread_env() == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 16)
    assert demo._tf_thread_env()["TF_NUM_INTRAOP_THREADS"] == "5"
    monkeypatch.setattr(demo.os, "cpu_count", lambda: None)
    assert demo._tf_thread_env()["TF_NUM_INTEROP_THREADS"] == "1"


def test_trusted_node_model(tmp_path: Path) -> None:
    fed = tmp_path / "federation.toml"
    fed.write_text(demo.demo_federation(tmp_path, Mode.SYNC_GRADIENTS))
    assert demo._trusted_node_model(fed, ()) == "small_cnn"
    assert demo._trusted_node_model(fed, ("training.model=mlp",)) == "mlp"
    assert demo._trusted_node_model(tmp_path / "missing.toml", ()) == ""


def _sealed_model(tmp_path: Path, model: str) -> tuple[str, str, float]:
    """A broker keystore with the model key, and a checkpoint sealed under it as the PS does."""
    broker = demo.demo_broker(tmp_path)
    (tmp_path / "keybroker").mkdir()
    demo._create_model_key(tmp_path, broker, PASS)
    cfg = tomllib.loads(broker)
    key = Keystore.open(cfg["broker"]["keystore"], passphrase=PASS).get("model").key
    data = load_dataset("digits", seed=0)
    adapter = make_adapter("keras", model, data.input_shape, data.num_classes, seed=1)
    adapter.train_local(data.x_train, data.y_train, steps=20, batch_size=64, learning_rate=0.01, optimizer="adam")
    _, accuracy = adapter.evaluate(data.x_test, data.y_test)
    meta = {
        "model": model,
        "framework": "keras",
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
    }
    store = SealedFileStore(tmp_path / "ps" / "checkpoints", key, label="checkpoint")
    path = store.save("final", adapter.get_tensor_set(), meta)
    return broker, path, accuracy


@pytest.mark.parametrize("model", ["small_cnn", "mlp"])
def test_trusted_node_checks_with_numpy(tmp_path: Path, model: str) -> None:
    broker, checkpoint, accuracy = _sealed_model(tmp_path, model)
    assert demo._unseal_and_evaluate(tmp_path, broker, PASS, checkpoint) == accuracy
    assert sorted(p.name for p in (tmp_path / "unsealed").iterdir()) == ["model.npz"]


def test_trusted_node_falls_back_to_keras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker, checkpoint, accuracy = _sealed_model(tmp_path, "mlp")
    monkeypatch.setattr("tdxfl.ml.reference.has_reference", lambda model: False)
    assert demo._unseal_and_evaluate(tmp_path, broker, PASS, checkpoint) == accuracy
    assert sorted(p.name for p in (tmp_path / "unsealed").iterdir()) == ["model.keras", "model.npz"]
    with np.load(tmp_path / "unsealed" / "model.npz") as npz:
        assert "mlp/output/bias" in npz.files
