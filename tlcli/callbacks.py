"""The Keras callbacks that `tlcli.train` hangs on every fit: progress bars, history, the best
model, early stopping, the per-epoch checkpoint and the safe points where Ctrl-C takes effect.

Imported only by the commands that train: importing it imports Keras.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

from tlcli import checkpoint
from tlcli.progress import format_logs
from tlcli.rundir import save_model, write_csv

# stopped_early is 1 on the last epoch of a phase that --patience ended early; readers that
# know only the first columns read the file as before.
HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "stopped_early"]
# A multi-label run's history.csv adds these (tlcli.objective): its accuracy columns are binary
# accuracy at 0.5, which most labels' absence makes high whatever the model does.
MULTILABEL_COLUMNS = ["map", "val_map"]


def val_score(values, multi_label: bool = False) -> tuple[float, float]:
    """What "better on validation" means, for the best model and for --patience: higher accuracy
    (multi-label: higher mAP), then lower loss. `values`: Keras's epoch logs or a history row."""
    if multi_label:
        # To 4 places: Keras's interpolated PR-AUC wobbles in the 7th (1.0000001 after 0.9999999
        # for two perfect rankings), which would otherwise outrank a lower loss.
        return round(float(values["val_map"]), 4), -float(values["val_loss"])
    return float(values["val_accuracy"]), -float(values["val_loss"])


class StopCheck(keras.callbacks.Callback):
    """A safe point after every training step: stops there once an interruption was requested."""

    def __init__(self, stopper: checkpoint.GracefulStop):
        super().__init__()
        self.stopper = stopper

    def on_train_batch_end(self, batch, logs=None):
        self.stopper.check()


class BestKeeper(keras.callbacks.Callback):
    """Keeps the best classifier on validation (`val_score`) in memory and in model.keras.

    Writing a large model takes a while, so an improvement is written at most every
    `every_seconds`; `flush()` (at the end of each phase and on interruption) writes any pending one.
    `saver` is the model written to disk: the classifier itself, or its float32 twin when the
    classifier computes in mixed precision (a saved model must compute what it was trained to).
    """

    def __init__(self, classifier, path: Path, best=None, best_epoch=None, epochs_seen: int = 0,
                 every_seconds: float = 30.0, saver=None, best_weights=None, multi_label: bool = False):
        super().__init__()
        self.classifier, self.path, self.every = classifier, path, every_seconds
        self.saver = saver if saver is not None else classifier
        self.multi_label = multi_label
        self.best = tuple(best) if best is not None else None  # (val_accuracy or val_map, -val_loss)
        self.best_weights = best_weights
        self.best_epoch = best_epoch
        self.epochs_seen = epochs_seen  # across both phases
        # The first write waits like the others: an early best is soon replaced, and each write costs.
        # Best weights from a checkpoint may be newer than model.keras (killed before their write).
        self.pending, self.last_write = best_weights is not None, time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen += 1
        score = val_score(logs, self.multi_label)
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, self.epochs_seen
            self.best_weights = self.classifier.get_weights()
            self.pending = True
            if time.monotonic() - self.last_write >= self.every:
                self.flush()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self) -> None:
        """Write the best model if a newer one than on disk is waiting."""
        if not self.pending:
            return
        current = self.saver.get_weights()
        self.saver.set_weights(self.best_weights)
        save_model(self.saver, self.path)
        self.saver.set_weights(current)
        self.pending, self.last_write = False, time.monotonic()

    def restore(self) -> None:
        if self.best_weights is not None:
            self.classifier.set_weights(self.best_weights)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: history.csv, curves.png and a resumable `last/` checkpoint.

    A kill -9 or an out-of-memory kill then costs at most the epoch in progress. curves.png is
    redrawn at most every `plot_every` seconds (matplotlib is slow next to a short cached epoch);
    `write_history` draws it for sure.
    """

    def __init__(self, run: Path, classifier, keeper: BestKeeper, history: list[dict], phase: int,
                 plot_every: float = 10.0):
        super().__init__()
        self.run, self.classifier, self.keeper, self.history = run, classifier, keeper, history
        self.phase, self.plot_every = phase, plot_every
        self.last_plot = -float("inf")

    def on_epoch_end(self, epoch, logs=None):
        plot = time.monotonic() - self.last_plot >= self.plot_every
        write_history(self.run, self.history, plot=plot)
        if plot:
            self.last_plot = time.monotonic()
        save_checkpoint(self.run, self.classifier, self.model.optimizer, self.phase, self.history, self.keeper)


def save_checkpoint(run: Path, classifier, optimizer, phase: int, history: list[dict], keeper: BestKeeper) -> None:
    """Everything `train --resume` needs to continue after the epochs recorded in `history`."""
    done_in_phase = sum(1 for row in history if row["phase"] == phase)
    checkpoint.save_last(run, classifier, optimizer,
                         {"phase": phase, "epoch": done_in_phase, "history": history, "best": keeper.best,
                          "best_epoch": keeper.best_epoch},
                         best_weights=keeper.best_weights)


def write_history(run: Path, history: list[dict], plot: bool = True) -> None:
    columns = HISTORY_COLUMNS + (MULTILABEL_COLUMNS if any("val_map" in row for row in history) else [])
    # rows from a checkpoint written before a column existed lack it
    write_csv(run / "history.csv", columns, [[row.get(c, 0) for c in columns] for row in history])
    if history and plot:
        from tlcli.plots import plot_curves

        plot_curves(history, run / "curves.png")


class EpochBars(keras.callbacks.Callback):
    """One rich progress bar per epoch with live loss and accuracy, instead of Keras's log."""

    def __init__(self, progress, phase: str, epochs: int, steps: int, first_epoch: int = 0):
        super().__init__()
        self.progress, self.phase, self.epochs, self.steps, self.first = progress, phase, epochs, steps, first_epoch

    def on_epoch_begin(self, epoch, logs=None):
        label = f"{self.phase} {self.first + epoch + 1}/{self.first + self.epochs}"
        self.task = self.progress.add_task(label, total=self.steps, info="")

    def on_train_batch_end(self, batch, logs=None):
        self.progress.update(self.task, completed=batch + 1, info=format_logs(logs))

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update(self.task, completed=self.steps, info=format_logs(logs))
        self.progress.stop_task(self.task)


class HistoryRecorder(keras.callbacks.Callback):
    """Appends one row per epoch (both phases) to a shared list, for history.csv and the curves."""

    def __init__(self, rows: list, phase: int, lr: float, offset: int = 0):
        super().__init__()
        self.rows, self.phase, self.lr, self.offset = rows, phase, lr, offset

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        self.epoch_lr = _current_rate(self.model, self.lr)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": self.offset + epoch + 1, "phase": self.phase, "lr": self.epoch_lr,
               "seconds": round(time.perf_counter() - self.started, 3), "stopped_early": 0}
        row.update({k: round(float(logs[k]), 5) for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
        row.update({k: round(float(logs[k]), 5) for k in MULTILABEL_COLUMNS if k in logs})
        self.rows.append(row)


def _current_rate(model, default: float) -> float:
    """The optimizer's learning rate now (a schedule's value at this step), else `default`."""
    try:
        return float(f"{float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)):.6g}")
    except (AttributeError, TypeError, ValueError):
        return default


class Patience(keras.callbacks.Callback):
    """--patience: ends the phase once `patience` epochs in a row have not beaten the phase's best
    validation score, and marks that epoch's history row. Hung after HistoryRecorder, whose row it
    reads: counting from the history, a resumed phase goes on counting where it was interrupted."""

    def __init__(self, rows: list, phase: int, patience: int, multi_label: bool = False):
        super().__init__()
        self.rows, self.phase, self.patience, self.multi_label = rows, phase, patience, multi_label

    def on_epoch_end(self, epoch, logs=None):
        waited = epochs_without_improvement(self.rows, self.phase, self.multi_label)
        if epoch + 1 < self.params["epochs"] and waited >= self.patience:
            self.rows[-1]["stopped_early"] = 1
            self.model.stop_training = True


def epochs_without_improvement(history: list[dict], phase: int, multi_label: bool = False) -> int:
    """How many of `phase`'s last epochs scored no better than its best one before them."""
    best, waited = None, 0
    for row in history:
        if row["phase"] == phase:
            score = val_score(row, multi_label)
            best, waited = (score, 0) if best is None or score > best else (best, waited + 1)
    return waited


def stopped_early(history: list[dict]) -> dict[str, int]:
    """{"phase1": the epoch it stopped at, …} for each phase --patience ended early."""
    return {f"phase{row['phase']}": row["epoch"] for row in history if row.get("stopped_early")}
