"""``tdxfl unseal`` and ``tdxfl export``: open sealed checkpoints on the model owner's trusted node.

``unseal`` decrypts a checkpoint written by the parameter server's ``SealedFileStore`` (label
``checkpoint``) with a key from the local broker keystore and writes ``model.npz`` (the weights,
by variable name) and ``model.keras`` (the model rebuilt with ``tdxfl.ml.models.build_model``).
The whole file is authenticated before anything is written: a truncated or tampered file, or
one sealed under another key, is refused and leaves no output behind. ``export`` re-seals a
checkpoint under another keystore key (e.g. one whose policy admits an inference TD). Errors print
one line and exit with the code of :mod:`tdxfl.cli.exits` (e.g. 5 for a wrong key).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from tdxfl.cli.exits import handle_errors
from tdxfl.errors import ConfigError, RecordError, SealedFileError, WrongKey
from tdxfl.files import atomic_write

if TYPE_CHECKING:  # at run time only load_sealed needs it (via the store): keeps `tdxfl` start-up light
    from tdxfl.engine.records import TensorSet

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)
_PATH = click.Path(dir_okay=False, path_type=Path)

__all__ = ["COMMANDS", "export", "export_model", "load_sealed", "unseal", "unseal_model"]


def load_sealed(sealed: Path, key: bytes, label: str = "checkpoint") -> tuple[TensorSet, dict[str, Any]]:
    """Authenticate and decode the sealed model file ``sealed`` (``<name>.sealed``) with ``key``.

    Raises WrongKey for a file sealed under another key, SealedFileError for a missing,
    truncated, tampered or renamed one, ConfigError for a name that is not ``<model>.sealed``.
    """
    from tdxfl.store.model_store import SEALED_SUFFIX, SealedFileStore

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
) -> dict[str, Path]:
    """Unseal ``sealed`` into ``out_dir``/model.npz (and model.keras); return the written paths.

    The model architecture comes from the checkpoint metadata (``model``, ``input_shape``,
    ``num_classes``) where present, else from the arguments (which take precedence). Nothing is
    written unless the file authenticates completely and the weights fit the rebuilt model.
    Raises what :func:`load_sealed` raises, ConfigError for missing or unusable model parameters
    or outputs in the way, RecordError when the weights do not fit the model.
    """
    tensors, meta = load_sealed(sealed, key, label)
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


def export_model(sealed: Path, key: bytes, to_key: bytes, out_dir: Path, *, label: str = "checkpoint",
                 out_label: str | None = None) -> Path:
    """Re-seal ``sealed`` (opened with ``key``) under ``to_key`` into ``out_dir``/<same name>.sealed."""
    from tdxfl.store.model_store import SEALED_SUFFIX, SealedFileStore

    tensors, meta = load_sealed(sealed, key, label)
    name = sealed.name[: -len(SEALED_SUFFIX)]
    target = SealedFileStore(out_dir, to_key, label=out_label or label)
    if target.path_for(name).resolve() == sealed.resolve():
        raise ConfigError("export would overwrite its input; choose another --out directory")
    return Path(target.save(name, tensors, meta))


def _key_from_keystore(keystore: Path, key_name: str, key_file: Path | None, passphrase_env: str | None) -> bytes:
    from tdxfl.cli.keybroker import open_keystore

    return bytes(open_keystore(keystore, key_file, passphrase_env).get(key_name).key)


def _shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: use comma-separated integers, e.g. 8,8,1") from None


_keystore_opts = [
    click.option("--keystore", required=True, type=_FILE, help="The broker keystore holding the key."),
    click.option("--key", "key_name", required=True, help="Name of the key the model is sealed under."),
    click.option("--key-file", type=_FILE, help="Key file protecting the keystore (instead of a passphrase)."),
    click.option("--passphrase-env", metavar="VAR", help="Environment variable holding the keystore passphrase."),
    click.option("--label", default="checkpoint", show_default=True, help="Sealed-file label."),
]


def _with_keystore_opts(f: Any) -> Any:
    for option in reversed(_keystore_opts):
        f = option(f)
    return f


@click.command()
@click.argument("sealed", type=_FILE)
@_with_keystore_opts
@click.option("--model", default=None, help="Model name for build_model (default: from the checkpoint).")
@click.option("--input-shape", default=None, help="e.g. 8,8,1 (default: from the checkpoint).")
@click.option("--num-classes", type=int, default=None, help="Number of classes (default: from the checkpoint).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--npz-only", is_flag=True, help="Write only model.npz (no Keras rebuild).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@handle_errors("tdxfl unseal")
def unseal(
    sealed: Path,
    keystore: Path,
    key_name: str,
    key_file: Path | None,
    passphrase_env: str | None,
    label: str,
    model: str | None,
    input_shape: str | None,
    num_classes: int | None,
    out_dir: Path,
    npz_only: bool,
    force: bool,
) -> None:
    """Unseal a sealed checkpoint SEALED into OUT/model.npz and OUT/model.keras."""
    key = _key_from_keystore(keystore, key_name, key_file, passphrase_env)
    written = unseal_model(
        sealed, key, out_dir, model=model, input_shape=_shape(input_shape), num_classes=num_classes,
        label=label, write_keras=not npz_only, force=force,
    )
    for path in written.values():
        click.echo(f"wrote {path}")


@click.command("unseal-file")
@click.argument("sealed", type=_FILE)
@_with_keystore_opts
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@handle_errors("tdxfl unseal-file")
def unseal_file(
    sealed: Path, keystore: Path, key_name: str, key_file: Path | None, passphrase_env: str | None, label: str, out_file: Path
) -> None:
    """Unseal any sealed file (e.g. metrics.jsonl.sealed with --label metrics) into OUT."""
    from tdxfl.store.sealed import read_sealed_bytes

    key = _key_from_keystore(keystore, key_name, key_file, passphrase_env)
    try:
        data = read_sealed_bytes(sealed, key, label=label)
    except WrongKey as e:
        raise WrongKey(f"{sealed}: {e}") from None
    except SealedFileError as e:
        raise SealedFileError(f"{sealed}: {e}") from None
    out_file.write_bytes(data)
    click.echo(f"wrote {out_file}")


@click.command()
@click.argument("sealed", type=_FILE)
@_with_keystore_opts
@click.option("--to-key", required=True, help="Keystore key to re-seal under.")
@click.option("--out-label", default=None, help="Label of the re-sealed file (default: --label).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@handle_errors("tdxfl export")
def export(
    sealed: Path,
    keystore: Path,
    key_name: str,
    key_file: Path | None,
    passphrase_env: str | None,
    label: str,
    to_key: str,
    out_label: str | None,
    out_dir: Path,
) -> None:
    """Re-seal checkpoint SEALED under keystore key --to-key into OUT."""
    from tdxfl.cli.keybroker import open_keystore

    store = open_keystore(keystore, key_file, passphrase_env)
    key, new_key = store.get(key_name).key, store.get(to_key).key
    path = export_model(sealed, key, new_key, out_dir, label=label, out_label=out_label)
    click.echo(f"wrote {path}")


COMMANDS = [unseal, unseal_file, export]
