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

from pathlib import Path
from typing import Any

import click

from tdxfl.cli.exits import handle_errors
from tdxfl.errors import SealedFileError, WrongKey

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)
_PATH = click.Path(dir_okay=False, path_type=Path)

__all__ = ["COMMANDS", "export", "unseal", "unseal_file"]


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
@click.option(
    "--task", "task_spec", default=None, help="The user task (module or .py file) whose build_model() the weights fit."
)
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
    task_spec: str | None,
) -> None:
    """Unseal a sealed checkpoint SEALED into OUT/model.npz and OUT/model.keras (a torch task's
    model: OUT/model.pt)."""
    from tdxfl.wiring.tasks import open_task
    from tdxfl.wiring.unseal import unseal_model

    task = open_task(task_spec, Path.cwd())[0] if task_spec else None
    key = _key_from_keystore(keystore, key_name, key_file, passphrase_env)
    written = unseal_model(
        sealed,
        key,
        out_dir,
        model=model,
        input_shape=_shape(input_shape),
        num_classes=num_classes,
        label=label,
        write_keras=not npz_only,
        force=force,
        task=task,
    )
    for path in written.values():
        click.echo(f"wrote {path}")


@click.command("unseal-file")
@click.argument("sealed", type=_FILE)
@_with_keystore_opts
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False, path_type=Path))
@handle_errors("tdxfl unseal-file")
def unseal_file(
    sealed: Path,
    keystore: Path,
    key_name: str,
    key_file: Path | None,
    passphrase_env: str | None,
    label: str,
    out_file: Path,
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
    from tdxfl.wiring.unseal import export_model

    store = open_keystore(keystore, key_file, passphrase_env)
    key, new_key = store.get(key_name).key, store.get(to_key).key
    path = export_model(sealed, key, new_key, out_dir, label=label, out_label=out_label)
    click.echo(f"wrote {path}")


COMMANDS = [unseal, unseal_file, export]
