"""``tdxfl volume create|open|close``: LUKS2 volumes with integrity for checkpoints at rest.

The volume key is never typed by a person, never on the command line and never in a file:
:func:`resolve_key` takes it from ``--key-fd N`` (raw bytes read to end of file from an
inherited pipe, the way a supervisor hands it over) or ``--key-env VAR`` (hex in an
environment variable, for tests and development; the variable is removed from this process's
environment once read so that cryptsetup and mount do not inherit it). When neither is
given, ``--federation FED.toml --party NAME`` has the key broker named in the federation file
release key ``--broker-key`` (default ``volume``) to this attested TD over RA-TLS, into memory.
Errors print one line and exit with the code of :mod:`tdxfl.cli.exits` (e.g. 5 for a wrong key,
4 when the broker refuses the key).

Example (a test)::

    TDXFL_VOLUME_KEY=$(openssl rand -hex 32) tdxfl volume create ckpt.img --size 64M --key-env TDXFL_VOLUME_KEY
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import click

from tdxfl.cli.exits import handle_errors
from tdxfl.store.luks import KEY_MAX_BYTES, KEY_MIN_BYTES, Pbkdf, close_volume, create_volume, open_volume

__all__ = ["COMMANDS", "broker_key_source", "no_key_source", "parse_size", "resolve_key", "volume"]

_SIZE_RE = re.compile(r"(?i)\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"64M"``, ``"64MiB"``, ``"1G"`` or a plain byte count -> bytes (binary units)."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: use a number with an optional K, M, G or T suffix (e.g. 64M)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def no_key_source(volume_id: str) -> bytes:
    """The key source when none was given: refuse (no command silently falls back)."""
    raise click.UsageError(
        f"no key source for volume {volume_id!r}: pass --federation FED.toml --party NAME (key broker), "
        "--key-fd N (a pipe) or --key-env VAR (hex, tests only)"
    )


def broker_key_source(federation_file: str, party: str, key_name: str) -> Callable[[str], bytes]:
    """A key source that fetches ``key_name`` from the federation's key broker as ``party``.

    The fetch raises ConfigError, KeyRefused, Unavailable or AttestationRefused (all from
    :mod:`tdxfl.errors`) with the reason.
    """

    def fetch(_volume_id: str) -> bytes:  # the broker names the key by key_name
        from tdxfl.config import load_federation
        from tdxfl.wiring.party import broker_key, party_context

        fed = load_federation(federation_file)
        if fed.keybroker is None:
            raise click.UsageError(f"{federation_file} has no [keybroker] table")
        return broker_key(fed, party_context(fed, party), key_name)

    return fetch


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > KEY_MAX_BYTES:
                raise click.BadParameter(
                    f"more than {KEY_MAX_BYTES} bytes on the key descriptor", param_hint="--key-fd"
                )
    except OSError as e:
        raise click.BadParameter(f"cannot read file descriptor {fd}: {e.strerror}", param_hint="--key-fd") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return b"".join(chunks)


def resolve_key(
    *,
    key_env: str | None,
    key_fd: int | None,
    volume_id: str,
    environ: MutableMapping[str, str] | None = None,
    broker: Callable[[str], bytes] = no_key_source,
) -> bytes:
    """Return the volume key from exactly one non-interactive source.

    * ``key_fd``: read raw bytes to end of file from that inherited descriptor (then close it);
    * ``key_env``: hex in that environment variable, which is then *removed* from ``environ``
      (default ``os.environ``) so child processes never inherit it;
    * neither: ``broker(volume_id)`` (the key broker, when the command was given a federation;
      otherwise a refusal).

    The key must be 32 to 8192 bytes. Error messages never contain key material.
    """
    if key_env is not None and key_fd is not None:
        raise click.UsageError("give only one of --key-env and --key-fd")
    if key_fd is not None:
        key = _read_fd(key_fd)
        source = f"file descriptor {key_fd}"
    elif key_env is not None:
        env = os.environ if environ is None else environ
        text = env.pop(key_env, None)
        if text is None:
            raise click.BadParameter(f"environment variable {key_env} is not set", param_hint="--key-env")
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise click.BadParameter(
                f"environment variable {key_env} does not hold hex", param_hint="--key-env"
            ) from None
        source = f"environment variable {key_env}"
    else:
        key = broker(volume_id)
        source = "the key broker"
    if not KEY_MIN_BYTES <= len(key) <= KEY_MAX_BYTES:
        raise click.UsageError(
            f"the key from {source} must be {KEY_MIN_BYTES} to {KEY_MAX_BYTES} bytes, got {len(key)}"
        )
    return key


def _key_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--key-fd", type=click.IntRange(min=0), metavar="N",
        help="Read the key (32+ raw bytes, to end of file) from inherited file descriptor N.",
    )(function)  # fmt: skip
    function = click.option(
        "--key-env", metavar="VAR", help="Read the key as hex from environment variable VAR (tests/development)."
    )(function)
    function = click.option("--broker-key", default="volume", show_default=True, help="Key name at the key broker.")(
        function
    )
    function = click.option("--party", help="This TD's party name in the federation file (with --federation).")(
        function
    )
    function = click.option(
        "-f",
        "--federation",
        "federation_file",
        type=click.Path(exists=True, dir_okay=False),
        help="Fetch the key from this federation's key broker over RA-TLS.",
    )(function)
    return function


def _key_source(
    federation_file: str | None, party: str | None, broker_key: str, *others: object
) -> Callable[[str], bytes]:
    if federation_file is None:
        return no_key_source
    if not party:
        raise click.UsageError("--federation needs --party (this TD's name in the federation file)")
    if any(o is not None for o in others):
        raise click.UsageError("give only one key source: --federation, --key-env or --key-fd")
    return broker_key_source(federation_file, party, broker_key)


def _volume_key(
    image: str, key_env: str | None, key_fd: int | None, federation_file: str | None, party: str | None, broker_key: str
) -> bytes:
    source = _key_source(federation_file, party, broker_key, key_env, key_fd)
    return resolve_key(key_env=key_env, key_fd=key_fd, volume_id=Path(image).name, broker=source)


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.group("volume")
def volume() -> None:
    """LUKS2 volumes with integrity (authenticated encryption) for checkpoints at rest."""


@volume.command("create")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option(
    "--size", default="64M", show_default=True, callback=_size, help="Image size (K/M/G suffixes; 32M at least)."
)
@click.option("--pbkdf", type=click.Choice(["argon2id", "pbkdf2"]), default="argon2id", show_default=True,
              help="Key derivation; pbkdf2 only for tests.")  # fmt: skip
@click.option("--pbkdf-memory", type=click.IntRange(min=1), metavar="KIB", help="argon2id memory cost in KiB.")
@click.option("--iter-time", type=click.IntRange(min=1), metavar="MS", help="KDF time target in milliseconds.")
@click.option("--pbkdf-iterations", type=click.IntRange(min=1), metavar="N",
              help="Force the KDF iteration count (tests only: skips cryptsetup's benchmark).")  # fmt: skip
@_key_options
@handle_errors("tdxfl volume create")
def create(
    image: str,
    size: int,
    pbkdf: Pbkdf,
    pbkdf_memory: int | None,
    iter_time: int | None,
    pbkdf_iterations: int | None,
    key_env: str | None,
    key_fd: int | None,
    federation_file: str | None,
    party: str | None,
    broker_key: str,
) -> None:
    """Create IMAGE: allocate, luksFormat (aes-xts-plain64 + hmac-sha256), mkfs.ext4."""
    key = _volume_key(image, key_env, key_fd, federation_file, party, broker_key)
    create_volume(
        image, key, size, pbkdf=pbkdf, pbkdf_memory_kib=pbkdf_memory,
        iter_time_ms=iter_time, pbkdf_iterations=pbkdf_iterations,
    )  # fmt: skip
    click.echo(f"created {image} ({size} bytes, LUKS2 with integrity)")


@volume.command("open")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Device-mapper name (/dev/mapper/NAME).")
@click.option("--mount", "mountpoint", required=True, type=click.Path(file_okay=False), help="Where to mount it.")
@click.option("--read-only", is_flag=True, help="Map and mount read-only.")
@_key_options
@handle_errors("tdxfl volume open")
def open_(
    image: str,
    name: str,
    mountpoint: str,
    read_only: bool,
    key_env: str | None,
    key_fd: int | None,
    federation_file: str | None,
    party: str | None,
    broker_key: str,
) -> None:
    """Unlock IMAGE as /dev/mapper/NAME and mount it on --mount."""
    key = _volume_key(image, key_env, key_fd, federation_file, party, broker_key)
    open_volume(image, key, name, mountpoint, read_only=read_only)
    click.echo(f"opened {image} as /dev/mapper/{name} on {mountpoint}")


@volume.command("close")
@click.option("--name", required=True, help="Device-mapper name given to open.")
@click.option("--mount", "mountpoint", required=True, type=click.Path(file_okay=False), help="Its mount point.")
@handle_errors("tdxfl volume close")
def close(name: str, mountpoint: str) -> None:
    """Unmount --mount and close /dev/mapper/NAME."""
    close_volume(name, mountpoint)
    click.echo(f"closed {name}")


COMMANDS = [volume]
