"""Rich progress bars for every long step (no TensorFlow here: the CLI imports it eagerly)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings

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
    """Keras logs as 'loss 0.552 acc 0.971 | val 0.794 0.790' (val loss, val accuracy); a
    multi-label run's mAP follows each accuracy ('acc 0.971 mAP 0.912')."""
    logs = logs or {}
    names = (("loss", "loss"), ("accuracy", "acc"), ("map", "mAP"))
    text = " ".join(f"{name} {float(logs[key]):.3f}" for key, name in names if key in logs)
    if "val_loss" in logs:
        text += f" | val {float(logs['val_loss']):.3f} {float(logs['val_accuracy']):.3f}"
        text += f" mAP {float(logs['val_map']):.3f}" if "val_map" in logs else ""
    return text


@contextlib.contextmanager
def quiet_native_output():
    """Silence what TensorFlow's and LiteRT's native code and Keras's export print.

    File descriptors 1 and 2 point at /dev/null meanwhile; when sys.stderr is the real fd 2 it
    is swapped for a copy of it, so progress bars (rich writes to sys.stderr) keep drawing.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    real_stderr, swapped = sys.stderr, None
    try:
        if _fileno(sys.stderr) == 2:
            swapped = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None))
            sys.stderr = swapped
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's UserWarnings about statistics
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        if swapped is not None:
            sys.stderr = real_stderr
            with contextlib.suppress(Exception):
                swapped.flush()  # not closed: a progress thread may still hold it; GC closes it


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except Exception:  # pytest's and click's capture streams have none
        return None
