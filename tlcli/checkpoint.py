"""Interrupting and resuming training without losing anything.

Every epoch end writes a `last/` checkpoint beside the best model, so even a kill -9 loses at
most one epoch. The first Ctrl-C (SIGINT) or SIGTERM asks training to stop at the next safe point
(after the current step); tlcli then saves `last/` once more and exits 130. A
second one stops at once; every file is written atomically, so nothing already written is harmed.
`tlcli train --resume RUN` rebuilds the run from its config.json and continues from `last/`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np

from tlcli.errors import TlcliError

LAST = "last"  # checkpoint folder inside the run
STATE = "state.json"
WEIGHTS = "classifier.weights.h5"
OPTIMIZER = "optimizer.npz"
BEST = "best_weights.npz"


class StopRequested(Exception):
    """Raised at a safe point after the first Ctrl-C or SIGTERM."""


class GracefulStop:
    """While active, the first SIGINT/SIGTERM sets a flag that `check()` turns into StopRequested;
    the second raises KeyboardInterrupt right away."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals only work there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise StopRequested


def save_last(run: Path, classifier, optimizer, state: dict, best_weights=None) -> None:
    """Write `run/last/` (weights, optimizer state, best weights, phase/epoch/history) in one atomic rename.

    Called at every epoch end, so a kill -9 at any moment leaves either the previous checkpoint
    or the new one: `last/` itself, or `.last.old` for the instant between the two renames.
    """
    final, tmp, old = run / LAST, run / f".{LAST}.tmp", run / f".{LAST}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        classifier.save_weights(tmp / WEIGHTS)
        if optimizer is not None and optimizer.built:
            np.savez(tmp / OPTIMIZER, *[np.asarray(v) for v in optimizer.variables])
        if best_weights is not None:
            # Beside model.keras because that is written at most every 30 s: the best weights
            # must match the best score in state.json, and every worker of a multi-worker
            # resume must restore the same ones.
            np.savez(tmp / BEST, *[np.asarray(w) for w in best_weights])
        (tmp / STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_state(run: Path) -> dict:
    """The saved phase, epoch, history and best score of an interrupted run."""
    _recover(Path(run))
    path = Path(run) / LAST / STATE
    if not path.is_file():
        if (Path(run) / ".complete").exists():
            raise TlcliError(f"'{run}' finished already; nothing to resume.")
        raise TlcliError(f"'{run}' has no checkpoint to resume from ({LAST}/{STATE} is missing).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TlcliError(f"'{path}' is damaged; cannot resume.") from None


def _recover(run: Path) -> None:
    """Put back the previous checkpoint if a kill landed between save_last's two renames."""
    old = run / f".{LAST}.old"
    if not (run / LAST).exists() and (old / STATE).is_file():
        os.replace(old, run / LAST)


def restore_weights(run: Path, classifier) -> None:
    classifier.load_weights(Path(run) / LAST / WEIGHTS)


def best_weights(run: Path) -> list | None:
    """The best weights saved with the checkpoint, or None for a checkpoint without them."""
    path = Path(run) / LAST / BEST
    if not path.is_file():
        return None
    saved = np.load(path)
    return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def restore_optimizer(run: Path, optimizer, variables) -> None:
    """Give a freshly compiled optimizer the moments and step count it had when interrupted."""
    path = Path(run) / LAST / OPTIMIZER
    if not path.is_file():
        return
    optimizer.build(variables)
    saved = np.load(path)
    values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise TlcliError(f"'{path}' does not match this model; cannot resume.")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)


def remove_last(run: Path) -> None:
    shutil.rmtree(Path(run) / LAST, ignore_errors=True)
