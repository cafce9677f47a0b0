"""Per-round training metrics: a JSON-lines file, a live console display, a PNG plot."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tdxfl.engine.server import RoundMetrics
from tdxfl.files import atomic_write

Sealer = Callable[[Path, bytes], None]


class MetricsRecorder:
    """Appends rounds to ``metrics.jsonl``, shows progress, and plots at the end.

    With ``seal`` (e.g. ``output.seal_metrics``), nothing is written in the clear: the metrics
    file and the plot go through ``seal(path, data)`` as ``<name>.sealed`` instead. ``history``
    (a resumed run's rounds so far) starts the file afresh with those rounds.
    """

    def __init__(
        self,
        path: Path,
        total_rounds: int,
        *,
        live: bool = True,
        seal: Sealer | None = None,
        history: Sequence[RoundMetrics] = (),
    ) -> None:
        self.path = path
        self._seal = seal
        self.rounds: list[RoundMetrics] = list(history)
        self._write_all()
        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self._console,
            disable=not live,
        )
        self._task = self._progress.add_task(
            "rounds", total=total_rounds, completed=len(self.rounds), status="waiting for workers"
        )

    def _write_all(self) -> None:
        text = "".join(json.dumps(asdict(r)) + "\n" for r in self.rounds).encode()
        if self._seal is not None:
            if self.rounds:
                self._seal(self.path.with_name(self.path.name + ".sealed"), text)
        else:
            with atomic_write(self.path) as f:
                f.write(text)

    def __enter__(self) -> MetricsRecorder:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def status(self, text: str) -> None:
        """Show ``text`` next to the progress bar."""
        self._progress.update(self._task, status=text)

    def record(self, m: RoundMetrics) -> None:
        """Persist and display one round."""
        self.rounds.append(m)
        if self._seal is None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(m)) + "\n")
        else:
            self._write_all()
        self._progress.update(
            self._task,
            advance=1,
            status=f"acc {m.accuracy:.3f} loss {m.loss:.3f} in {m.bytes_in / 1e6:.1f} MB out {m.bytes_out / 1e6:.1f} MB",
        )
        workers = (
            f"  workers' validation accuracy {m.worker_val_accuracy:.4f} ({m.worker_val_samples} samples)"
            if m.worker_val_samples
            else ""
        )
        privacy = "" if m.epsilon is None else f"  epsilon {m.epsilon:.3f}"
        self._progress.console.print(
            f"round {m.round:3d}: accuracy {m.accuracy:.4f}  loss {m.loss:.4f}  train-loss {m.train_loss:.4f}  "
            f"updates {m.contributors} (rejected {m.rejected})  {m.round_s:.2f}s{workers}{privacy}"
        )

    def plot(self, path: Path) -> None:
        """Accuracy and loss per round as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rounds = [m.round for m in self.rounds]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(rounds, [m.accuracy for m in self.rounds], marker="o", label="PS held-out")
        if any(m.worker_val_samples for m in self.rounds):
            # the workers evaluate the model a round starts from: plot it at the round that made it
            made = [(m.round - 1, m.worker_val_accuracy) for m in self.rounds if m.worker_val_samples and m.round > 1]
            ax1.plot([r for r, _ in made], [a for _, a in made], marker=".", label="workers' validation")
            ax1.legend()
        ax1.set(xlabel="round", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
        ax2.plot(rounds, [m.loss for m in self.rounds], marker="o", label="held-out")
        ax2.plot(rounds, [m.train_loss for m in self.rounds], marker=".", label="training")
        ax2.set(xlabel="round", ylabel="loss", title="Loss")
        ax2.legend()
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        if self._seal is None:
            path.write_bytes(png.getvalue())
        else:
            self._seal(path.with_name(path.name + ".sealed"), png.getvalue())
