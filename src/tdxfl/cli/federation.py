"""``tdxfl ps``, ``tdxfl worker`` and ``tdxfl demo``."""

from __future__ import annotations

import gc
import json
import signal
import sys
from pathlib import Path

import click

from tdxfl.cli.exits import handle_errors
from tdxfl.config import Federation, load_federation
from tdxfl.engine.kinds import Mode

_federation_option = click.option(
    "-f",
    "--federation",
    "federation_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The federation file (TOML).",
)
_data_option = click.option(
    "--data",
    "data",
    default=None,
    type=click.Path(path_type=Path),
    help="This party's own data (overrides its [[party]] data): handed to the task's load_data.",
)
_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a federation-file setting (repeatable), e.g. --set training.rounds=3.",
)


def _preload_training_stack(fed: Federation) -> None:
    """Start importing the ML framework and data-set modules in the background.

    Called once the party's own imports are done: its first step, fetching the model key from the
    key broker, is network-bound, so TensorFlow's multi-second import overlaps it instead of
    following it (see :mod:`tdxfl.ml.preload`).
    """
    from tdxfl.ml.preload import start_preload, training_modules

    start_preload(training_modules(fed.training.framework, fed.training.dataset))


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM (what ``docker stop``, Kubernetes and ``kill`` send) stop the party as Ctrl-C
    does, so it tells its peers and exits 130 instead of dying mid-write."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _before_exit() -> None:
    """Make interpreter shutdown cheap once a command's work is done.

    With TensorFlow (or scikit-learn/SciPy) loaded, the garbage collection at exit walks every
    object those libraries created: ~0.7 s of CPU per TF process here, 0.15 s once they are
    frozen into the permanent generation. Nothing depends on that collection: every file tdxfl
    writes is closed before this point.
    """
    gc.freeze()


@click.command()
@_federation_option
@_set_option
@click.option("--name", default=None, help="This party's name (default: the federation's ps).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where this party writes (default: OUTPUT.DIR/NAME).",
)
@click.option("--no-live", is_flag=True, help="No live progress display.")
@click.option(
    "--fresh",
    is_flag=True,
    help="Start a new run even where WORKDIR holds an earlier one (its files move to previous-runs/RUN-ID/); "
    "without it the PS resumes the run it finds.",
)
@_data_option
def ps(
    federation_file: Path,
    overrides: tuple[str, ...],
    name: str | None,
    workdir: Path | None,
    no_live: bool,
    fresh: bool,
    data: Path | None,
) -> None:
    """Run the parameter server: resume the run in its working directory, or start one.

    SIGINT and SIGTERM stop it: the workers are told the run was interrupted, and a restart
    resumes it after its last completed round.
    """
    from tdxfl.wiring.party import check_start, party_context
    from tdxfl.wiring.ps import run_parameter_server

    with handle_errors("tdxfl ps"):
        _interrupt_on_sigterm()
        fed = load_federation(federation_file, overrides)
        name = name or fed.ps.name
        if data is not None:
            fed = fed.with_party_data(name, str(data.resolve()))
        check_start(fed, name, "ps")
        ctx = party_context(fed, name, workdir)
        _preload_training_stack(fed)
        result = run_parameter_server(fed, ctx, live=not no_live, fresh=fresh)
    (ctx.workdir / "result.json").write_text(json.dumps(result.__dict__, indent=2))
    click.echo(f"final accuracy {result.accuracy:.4f} after {result.rounds} rounds; sealed model {result.checkpoint}")
    _before_exit()


@click.command()
@_federation_option
@_set_option
@click.option("--name", required=True, help="This worker's party name.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None)
@_data_option
def worker(
    federation_file: Path, overrides: tuple[str, ...], name: str, workdir: Path | None, data: Path | None
) -> None:
    """Run a worker: train until the PS ends the run. Exits 0 only when the run completed."""
    from tdxfl.wiring.party import check_start, party_context
    from tdxfl.wiring.worker import run_worker

    with handle_errors(f"tdxfl worker {name}"):
        _interrupt_on_sigterm()
        fed = load_federation(federation_file, overrides)
        if data is not None:
            fed = fed.with_party_data(name, str(data.resolve()))
        check_start(fed, name, "worker")
        ctx = party_context(fed, name, workdir)
        _preload_training_stack(fed)
        result = run_worker(fed, ctx)
    click.echo(f"worker {name}: {result.steps} updates sent, {result.rejected} refused")
    _before_exit()


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (default: a new directory under ./runs).",
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the run summary as JSON here.",
)
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default=Mode.SYNC_GRADIENTS.value)
@_set_option
def demo(workdir: Path | None, summary_json: Path | None, mode: str, overrides: tuple[str, ...]) -> None:
    """Run a whole federation on this machine: 1 PS + 2 workers, simulated TDs, digits data."""
    from tdxfl.wiring.demo import run_demo

    with handle_errors("tdxfl demo"):
        summary = run_demo(workdir, mode=Mode(mode), overrides=overrides)
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2))
    _before_exit()
    sys.exit(0 if summary["ok"] else 1)


COMMANDS: list[click.Command] = [ps, worker, demo]
