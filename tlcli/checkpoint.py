"""Interrupting and resuming training without losing anything.

The first Ctrl-C (SIGINT) or SIGTERM asks training to stop at the next safe point (after the
current step); tlcli then saves a `last/` checkpoint beside the best model and exits 130. A
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


def save_last(run: Path, classifier, optimizer, state: dict) -> None:
    """Write `run/last/` (weights, optimizer state, phase/epoch/history) in one atomic rename."""
    final, tmp = run / LAST, run / f".{LAST}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        classifier.save_weights(tmp / WEIGHTS)
        if optimizer is not None and optimizer.built:
            np.savez(tmp / OPTIMIZER, *[np.asarray(v) for v in optimizer.variables])
        (tmp / STATE).write_text(json.dumps(state, indent=2))
        old = run / f".{LAST}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_state(run: Path) -> dict:
    """The saved phase, epoch, history and best score of an interrupted run."""
    path = Path(run) / LAST / STATE
    if not path.is_file():
        if (Path(run) / ".complete").exists():
            raise TlcliError(f"'{run}' finished already; nothing to resume.")
        raise TlcliError(f"'{run}' has no checkpoint to resume from ({LAST}/{STATE} is missing).")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise TlcliError(f"'{path}' is damaged; cannot resume.") from None


def restore_weights(run: Path, classifier) -> None:
    classifier.load_weights(Path(run) / LAST / WEIGHTS)


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
