"""``tdxfl unseal`` / ``tdxfl export``: sealed checkpoint -> .npz + .keras, refusing bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from kb_support import PASSPHRASE
from tdxfl.cli.model import export, unseal
from tdxfl.errors import WrongKey
from tdxfl.keybroker.keystore import Keystore
from tdxfl.store.model_store import SealedFileStore

ENV = {"KS_PASS": PASSPHRASE}
SHAPE = (8, 8, 1)


@pytest.fixture
def trained(tmp_path: Path, keystore: Keystore) -> tuple[Path, Any]:
    """A small Keras model, perturbed from its init, sealed as the PS does (label "checkpoint")."""
    from tdxfl.ml.keras_adapter import KerasAdapter
    from tdxfl.ml.models import build_model

    model = build_model("mlp", SHAPE, 10, seed=3)
    adapter = KerasAdapter(model)
    rng = np.random.default_rng(0)
    adapter.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in adapter.get_weights()])
    store = SealedFileStore(tmp_path / "ps" / "checkpoints", keystore.get("model").key, label="checkpoint")
    meta = {"round": 3, "model": "mlp", "input_shape": list(SHAPE), "num_classes": 10, "accuracy": 0.5}
    path = Path(store.save("final", adapter.get_tensor_set(), meta))
    return path, model


def run(command: Any, *args: str) -> Any:
    return CliRunner().invoke(command, list(args), env=ENV)


def ks_args(keystore: Keystore, key: str = "model") -> list[str]:
    return ["--keystore", str(keystore.path), "--key", key, "--passphrase-env", "KS_PASS"]


def test_unseal_round_trip_keras_predictions_match(
    tmp_path: Path, keystore: Keystore, trained: tuple[Path, Any]
) -> None:
    import keras

    sealed, model = trained
    out = tmp_path / "out"
    result = run(unseal, str(sealed), *ks_args(keystore), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "model.npz").stat().st_mode & 0o077 == 0
    with np.load(out / "model.npz", allow_pickle=False) as npz:
        for v in model.weights:
            np.testing.assert_array_equal(npz[v.path], v.numpy())
    loaded = keras.saving.load_model(out / "model.keras")
    x = np.random.default_rng(1).random((16, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    again = run(unseal, str(sealed), *ks_args(keystore), "--out", str(out))
    assert again.exit_code == 2 and "overwrite" in again.output  # ConfigError: --force decides


def test_unseal_takes_architecture_from_options_when_metadata_lacks_it(tmp_path: Path, keystore: Keystore) -> None:
    from tdxfl.ml.keras_adapter import KerasAdapter
    from tdxfl.ml.models import build_model

    adapter = KerasAdapter(build_model("mlp", SHAPE, 4))
    store = SealedFileStore(tmp_path / "ck", keystore.get("model").key, label="checkpoint")
    sealed = store.save("round-0001", adapter.get_tensor_set(), {"round": 1})
    missing = run(unseal, sealed, *ks_args(keystore), "--out", str(tmp_path / "o1"))
    assert missing.exit_code == 2 and "--model, --input-shape, --num-classes" in missing.output
    wrong = run(
        unseal,
        sealed,
        *ks_args(keystore),
        "--out",
        str(tmp_path / "o2"),
        "--model",
        "mlp",
        "--input-shape",
        "8,8,1",
        "--num-classes",
        "10",
    )
    assert wrong.exit_code == 1 and "do not fit" in wrong.output  # RecordError
    ok = run(
        unseal,
        sealed,
        *ks_args(keystore),
        "--out",
        str(tmp_path / "o3"),
        "--model",
        "mlp",
        "--input-shape",
        "8,8,1",
        "--num-classes",
        "4",
    )
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("damage", ["flip-middle", "flip-header", "truncate", "truncate-chunk", "append"])
def test_tampered_or_truncated_input_is_refused_and_writes_nothing(
    tmp_path: Path, keystore: Keystore, trained: tuple[Path, Any], damage: str
) -> None:
    sealed, _ = trained
    data = bytearray(sealed.read_bytes())
    if damage == "flip-middle":
        data[len(data) // 2] ^= 0x01
    elif damage == "flip-header":
        data[20] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "truncate-chunk":
        data = data[:-1]
    else:
        data += b"\x00"
    sealed.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = run(unseal, str(sealed), *ks_args(keystore), "--out", str(out))
    assert result.exit_code == 5  # SealedFileError (WrongKey for the flipped header)
    assert "refusing" in result.output and ("tampered" in result.output or "truncated" in result.output)
    assert not (out / "model.npz").exists() and not (out / "model.keras").exists()


def test_wrong_key_or_renamed_file_is_refused(tmp_path: Path, keystore: Keystore, trained: tuple[Path, Any]) -> None:
    sealed, _ = trained
    result = run(unseal, str(sealed), *ks_args(keystore, "ps-only"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 5 and "sealed under another key" in result.output
    renamed = sealed.with_name("round-0009.sealed")
    sealed.rename(renamed)
    result = run(unseal, str(renamed), *ks_args(keystore), "--out", str(tmp_path / "o"))
    assert result.exit_code == 5 and "does not hold model" in result.output
    bad_pass = CliRunner().invoke(
        unseal, [str(renamed), *ks_args(keystore), "--out", str(tmp_path / "o")], env={"KS_PASS": "wrong passphrase"}
    )
    assert bad_pass.exit_code == 5 and "wrong passphrase" in bad_pass.output


def test_export_reseals_under_another_key(tmp_path: Path, keystore: Keystore, trained: tuple[Path, Any]) -> None:
    sealed, model = trained
    out = tmp_path / "export"
    result = run(export, str(sealed), *ks_args(keystore), "--to-key", "ps-only", "--out", str(out))
    assert result.exit_code == 0, result.output
    tensors, meta = SealedFileStore(out, keystore.get("ps-only").key, label="checkpoint").load("final")
    assert meta["round"] == 3
    for a, v in zip(tensors.arrays, model.weights):
        np.testing.assert_array_equal(a, v.numpy())
    with pytest.raises(WrongKey, match="wrong key"):
        SealedFileStore(out, keystore.get("model").key, label="checkpoint").load("final")
