"""The ``tdxfl`` command line: one click group, one module per family of subcommands.

Every command exits with the status that :mod:`tdxfl.cli.exits` maps its outcome to.
"""

from __future__ import annotations

import logging

import click

from tdxfl.cli.exits import exit_status_summary
from tdxfl.engine.fleet import PROGRESS_LOGGER


@click.group(epilog=f"Exit status: {exit_status_summary()}.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """tdxfl: federated learning between attested Intel TDX trust domains."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # where a party listens or connects, joins and leaves, waits, rounds: shown at every verbosity
    logging.getLogger(PROGRESS_LOGGER).setLevel(min(level, logging.INFO))


def _register() -> None:
    from tdxfl.cli import attest, federation, keybroker, model, volume

    for module in (federation, attest, keybroker, model, volume):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
