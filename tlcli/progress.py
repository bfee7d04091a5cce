"""Rich progress bars for every long step (no TensorFlow here: the CLI imports it eagerly)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def make_progress(console: Console, quiet: bool = False) -> Progress:
    # Narrow fixed columns leave room for the live metrics on an 80-column terminal.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=12),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet,
        transient=False,
    )


class Step:
    """One progress bar for a step of known size: `start(total)`, `advance(n)`, `done()`.

    `check`, if given, is called on every advance: a safe point where an interruption may stop work.
    """

    def __init__(self, progress: Progress, description: str, check=None):
        self.progress, self.description, self.task, self.check = progress, description, None, check

    def start(self, total: int) -> None:
        self.task = self.progress.add_task(self.description, total=total, info="")

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)
        if self.check:
            self.check()

    def done(self, info: str = "") -> None:
        if self.task is not None:
            self.progress.update(self.task, info=info)
            self.progress.stop_task(self.task)


def format_logs(logs) -> str:
    """Keras logs as 'loss 0.552 acc 0.971 | val 0.794 0.790' (val loss, val accuracy)."""
    logs = logs or {}
    text = " ".join(f"{name} {float(logs[key]):.3f}" for key, name in (("loss", "loss"), ("accuracy", "acc")) if key in logs)
    if "val_loss" in logs:
        text += f" | val {float(logs['val_loss']):.3f} {float(logs['val_accuracy']):.3f}"
    return text
