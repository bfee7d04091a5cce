"""Rich progress bars for every long step (no TensorFlow here: the CLI imports it eagerly)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(console: Console, quiet: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet,
        transient=False,
    )


class Step:
    """One progress bar for a step of known size: `start(total)`, `advance(n)`, `done()`."""

    def __init__(self, progress: Progress, description: str):
        self.progress, self.description, self.task = progress, description, None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task(self.description, total=total, info="")

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def done(self, info: str = "") -> None:
        if self.task is not None:
            self.progress.update(self.task, info=info)
            self.progress.stop_task(self.task)


def format_logs(logs) -> str:
    logs = logs or {}
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            parts.append(f"{key.replace('accuracy', 'acc')} {float(logs[key]):.3f}")
    return "  ".join(parts)
