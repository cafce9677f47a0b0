"""``tdxfl keybroker``: run the key broker and manage its keystore and audit log.

``tdxfl keybroker --config broker.toml`` (or ``... serve``) serves; ``new-key``, ``set-policy``,
``list`` and ``verify-audit`` manage the keystore named in the config (or ``--keystore``). The
keystore passphrase comes from ``--passphrase-env VAR`` or a hidden prompt, never from argv; a
keystore protected by a key file uses ``broker.key_file`` or ``--key-file``. Errors print one
line and exit with the code of :mod:`tdxfl.cli.exits` (e.g. 5 for a wrong passphrase).
"""

from __future__ import annotations

import functools
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from tdxfl.attestation.policy import Policy
from tdxfl.cli.exits import exit_code, handle_errors
from tdxfl.errors import ConfigError

_PATH = click.Path(dir_okay=False, path_type=Path)


@dataclass
class _Opts:
    config: Path | None
    keystore: Path | None
    key_file: Path | None
    passphrase_env: str | None


def get_passphrase(passphrase_env: str | None, *, confirm: bool = False) -> str:
    """The keystore passphrase from environment variable ``passphrase_env``, else a hidden prompt."""
    if passphrase_env:
        value = os.environ.get(passphrase_env)
        if not value:
            raise click.UsageError(f"environment variable {passphrase_env} is not set or empty")
        return value
    if not sys.stdin.isatty():
        raise click.UsageError("no passphrase: use --passphrase-env VAR (stdin is not a terminal)")
    return str(click.prompt("Keystore passphrase", hide_input=True, confirmation_prompt=confirm))


def _broker_config(opts: _Opts) -> Any:
    from tdxfl.config.broker import load_broker_config

    if opts.config is None:
        return None
    return load_broker_config(opts.config)


def _keystore_location(opts: _Opts) -> tuple[Path, Path | None]:
    cfg = _broker_config(opts)
    path = opts.keystore or (cfg.keystore if cfg else None)
    if path is None:
        raise click.UsageError("name the keystore with --config broker.toml or --keystore PATH")
    key_file = opts.key_file or (cfg.key_file if cfg else None)
    return path, key_file


def open_keystore(path: Path, key_file: Path | None, passphrase_env: str | None, *, create: bool = False) -> Any:
    """Open (or, with ``create``, create when missing) the keystore.

    Raises WrongKey, SealedFileError or ConfigError as ``Keystore.open``/``create`` do.
    """
    from tdxfl.keybroker.keystore import Keystore

    if create and not path.exists():
        click.echo(f"creating keystore {path}", err=True)
        if key_file is not None:
            return Keystore.create(path, key_file=key_file)
        return Keystore.create(path, passphrase=get_passphrase(passphrase_env, confirm=True))
    if key_file is not None:
        return Keystore.open(path, key_file=key_file)
    return Keystore.open(path, passphrase=get_passphrase(passphrase_env))


def _read_policy(policy_file: Path | None) -> Policy:
    if policy_file is None:
        raise click.UsageError(
            "--policy-file is required: a TOML policy table (tee, mrtd, rtmr0..3, allow_debug, ...) "
            "naming the TDs that may receive this key"
        )
    try:
        doc = tomllib.loads(policy_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.UsageError(f"cannot read policy file {policy_file}: {e}") from e
    table = doc.get("policy", doc) if set(doc) <= {"policy"} else doc
    try:
        return Policy.from_dict(table)
    except ConfigError as e:
        raise click.UsageError(f"{policy_file}: {e}") from e


_GROUP_OPTIONS = [
    click.option("--config", "config", type=_PATH, help="broker.toml"),
    click.option("--keystore", type=_PATH, help="Keystore file (default: broker.keystore from --config)."),
    click.option("--key-file", type=_PATH, help="Key file protecting the keystore (instead of a passphrase)."),
    click.option(
        "--passphrase-env", metavar="VAR", help="Read the keystore passphrase from this environment variable."
    ),
]


def _common_options(f: Callable[..., None]) -> Callable[..., None]:
    """Accept the group's options after the subcommand too (``keybroker list --config X``)."""

    @functools.wraps(f)
    def wrapper(
        opts: _Opts,
        *args: Any,
        config: Path | None = None,
        keystore: Path | None = None,
        key_file: Path | None = None,
        passphrase_env: str | None = None,
        **kwargs: Any,
    ) -> None:
        merged = _Opts(
            config or opts.config,
            keystore or opts.keystore,
            key_file or opts.key_file,
            passphrase_env or opts.passphrase_env,
        )
        f(merged, *args, **kwargs)

    for option in reversed(_GROUP_OPTIONS):
        wrapper = option(wrapper)
    return click.pass_obj(wrapper)


def _roles(text: str) -> list[str]:
    return [r.strip() for r in text.split(",") if r.strip()]


def _group_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_GROUP_OPTIONS):
        f = option(f)
    return f


@click.group("keybroker", invoke_without_command=True)
@_group_options
@click.pass_context
def keybroker(
    ctx: click.Context, config: Path | None, keystore: Path | None, key_file: Path | None, passphrase_env: str | None
) -> None:
    """The key broker: releases model keys to attested TDs (default action: serve)."""
    ctx.obj = _Opts(config, keystore, key_file, passphrase_env)
    if ctx.invoked_subcommand is None:
        if config is None:
            click.echo(ctx.get_help())
            ctx.exit(2)
        ctx.invoke(serve)


@keybroker.command()
@_common_options
@handle_errors("tdxfl keybroker serve")
def serve(opts: _Opts) -> None:
    """Serve the key broker until interrupted."""
    from tdxfl.wiring.keybroker import run_keybroker

    config = opts.config
    if config is None:
        raise click.UsageError("serve needs --config broker.toml")
    cfg = _broker_config(opts)
    key_file = opts.key_file or cfg.key_file
    passphrase = None if key_file is not None else get_passphrase(opts.passphrase_env)
    run_keybroker(config, passphrase=passphrase, key_file=key_file)


@keybroker.command("new-key")
@click.argument("name")
@click.option("--policy-file", type=_PATH, help="TOML policy table the fetching TD must meet.")
@click.option("--roles", default="ps,worker", show_default=True, help="Comma-separated roles allowed to fetch it.")
@_common_options
@handle_errors("tdxfl keybroker new-key")
def new_key(opts: _Opts, name: str, policy_file: Path | None, roles: str) -> None:
    """Generate a random 32-byte key NAME (creating the keystore if needed)."""
    policy = _read_policy(policy_file)
    path, key_file = _keystore_location(opts)
    store = open_keystore(path, key_file, opts.passphrase_env, create=True)
    info = store.new_key(name, policy, _roles(roles))
    click.echo(f"created key {info.name!r} for roles {', '.join(info.roles)}")


@keybroker.command("set-policy")
@click.argument("name")
@click.option("--policy-file", type=_PATH, help="New TOML policy table.")
@click.option("--roles", default=None, help="New comma-separated roles.")
@_common_options
@handle_errors("tdxfl keybroker set-policy")
def set_policy(opts: _Opts, name: str, policy_file: Path | None, roles: str | None) -> None:
    """Replace key NAME's release policy and/or roles."""
    if policy_file is None and roles is None:
        raise click.UsageError("give --policy-file and/or --roles")
    policy = _read_policy(policy_file) if policy_file is not None else None
    path, key_file = _keystore_location(opts)
    store = open_keystore(path, key_file, opts.passphrase_env)
    info = store.set_policy(name, policy, _roles(roles) if roles is not None else None)
    click.echo(f"updated key {info.name!r}: roles {', '.join(info.roles)}")


@keybroker.command("list")
@click.option("--policies", is_flag=True, help="Also print each key's policy.")
@_common_options
@handle_errors("tdxfl keybroker list")
def list_keys(opts: _Opts, policies: bool) -> None:
    """List the keys (never their bytes)."""
    from tdxfl.cli.attest import policy_toml

    path, key_file = _keystore_location(opts)
    store = open_keystore(path, key_file, opts.passphrase_env)
    infos = store.list()
    if not infos:
        click.echo("no keys")
    for info in infos:
        mrtd = "any" if info.policy.mrtd is None else f"{len(info.policy.mrtd)} MRTD(s)"
        click.echo(
            f"{info.name}\troles={','.join(info.roles)}\ttee={','.join(sorted(info.policy.tee))}\t"
            f"mrtd={mrtd}\tdebug={'allowed' if info.policy.allow_debug else 'refused'}\tcreated={info.created}"
        )
        if policies:
            click.echo("".join(f"    {line}\n" for line in policy_toml(info.policy).splitlines()), nl=False)


@keybroker.command("verify-audit")
@click.option("--audit-log", type=_PATH, help="Audit log (default: broker.audit_log from --config).")
@click.option("--chain-only", is_flag=True, help="Check the hash chain only, not the MACs (no keystore needed).")
@_common_options
@handle_errors("tdxfl keybroker verify-audit")
def verify_audit(opts: _Opts, audit_log: Path | None, chain_only: bool) -> None:
    """Verify the audit log's hash chain (and MACs); exit 5 naming the first broken line."""
    from tdxfl.keybroker.audit import AuditChainError, verify_chain

    cfg = _broker_config(opts)
    path = audit_log or (cfg.audit_log if cfg else None)
    if path is None:
        raise click.UsageError("name the audit log with --config broker.toml or --audit-log PATH")
    mac_key = None
    if not chain_only:
        ks_path, key_file = _keystore_location(opts)
        mac_key = open_keystore(ks_path, key_file, opts.passphrase_env).audit_mac_key()
    try:
        status = verify_chain(path, mac_key)
    except AuditChainError as e:
        click.echo(f"BROKEN: {path}: {e}", err=True)
        sys.exit(exit_code(e))
    macs = "hash chain and MACs" if status.macs_checked else "hash chain (MACs not checked)"
    click.echo(f"OK: {path}: {status.entries} entries, {macs} intact; head {status.head}")


COMMANDS = [keybroker]
