"""`tlcli train`: the two-phase fine-tuning schedule, from DATA_DIR to a complete run directory.

    load images once -> split the classifier where phase 2's trainable part begins
    -> run the frozen stem once per view (tlcli.cache)
    -> phase 1: head on pooled features -> phase 2: unfrozen top + head on cached activations
    -> best model, metrics, curves

Backbones trained from scratch (--weights none) have no BatchNorm statistics worth freezing, so
their phase 2 runs end to end on freshly augmented images instead.
Imported only by the commands that train: importing it imports TensorFlow.
"""

from __future__ import annotations

import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from rich.console import Console

from tlcli import __version__, cache, checkpoint, distribute
from tlcli.augment import build_augmenter
from tlcli.config import TrainConfig
from tlcli.data import class_weights, load_folder, make_dataset
from tlcli.errors import TlcliError
from tlcli.model import (build_classifier, count_params, feature_model, freeze_backbone, head_model, load_classifier,
                         pretrained, split_backbone, top_classifier, unfreeze_top)
from tlcli.progress import Step, format_logs, make_progress
from tlcli.rundir import create_run_dir, mark_complete, save_model, write_csv, write_json, write_text

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
CACHE_DIR = ".cache"  # inside the run folder; removed when training ends


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


def train(config: TrainConfig | None = None, console: Console | None = None, quiet: bool = False,
          resume: str | Path | None = None) -> TrainResult:
    """Fine-tune `config.backbone` on `config.data_dir` and leave a complete run directory.

    With `resume` (an interrupted run folder), the run's own config.json is used and training
    continues from its `last/` checkpoint in the same phase and epoch.
    """
    console = console or Console(stderr=True)
    state = saved = None
    if resume is not None:
        resume = Path(resume)
        state = checkpoint.load_state(resume)
        saved = json.loads((resume / "config.json").read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(saved)
    config = config.resolve()
    strategy = distribute.make_strategy(config.strategy)  # first: multi-worker setup precedes other TF work
    chief = distribute.is_chief(strategy)
    quiet = quiet or not chief  # workers train in step with the chief but report nothing
    gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and gpu)
    xla = config.xla == "on" or (config.xla == "auto" and gpu)
    keras.utils.set_random_seed(config.seed)
    say = (lambda *a: None) if quiet else console.print
    if note := distribute.ignored_tf_config(strategy):
        say(f"[yellow]warning:[/] {note}")

    with checkpoint.GracefulStop() as stopper:
        try:
            with make_progress(console, quiet) as progress:
                loading = Step(progress, "Loading", check=stopper.check)
                data = load_folder(config.data_dir, config.image_size, config.val_split, config.seed, loading)
                loading.done(f"{len(data.train)} train, {len(data.val)} val, {len(data.skipped)} skipped")
        except checkpoint.StopRequested:
            raise TlcliError("interrupted before training started; nothing was written.", exit_code=130) from None
        if saved is not None and data.class_names != saved["class_names"]:
            raise TlcliError(f"the classes in {config.data_dir} changed since {resume} started; cannot resume.")
        for note in data.warnings:
            say(f"[yellow]warning:[/] {note}")
        if data.skipped:
            say(f"[yellow]skipped {len(data.skipped)} unreadable file(s)[/]; see skipped.csv")

        previous_policy = keras.mixed_precision.dtype_policy()
        if mixed:  # float16 compute, float32 weights; the output layer stays float32
            keras.mixed_precision.set_dtype_policy("mixed_float16")
        try:
            with distribute.fit_scope(strategy):  # models are built and trained under the strategy
                classifier = build_classifier(config.backbone, len(data.class_names), config.image_size,
                                              config.weights, config.dropout)
                run = _open_run(config, data, chief, resume, say)
                if resume is not None:
                    checkpoint.restore_weights(run, classifier)
                    say(f"Resuming [bold]{run}[/] at phase {state['phase']}, epoch {state['epoch'] + 1}")
                else:
                    say(f"Run directory: [bold]{run}[/]" + ("  (GPU" + (", mixed precision" if mixed else "") +
                                                            (", XLA" if xla else "") + ")" if gpu else ""))
                try:
                    return _fit(config, data, classifier, run, console, quiet, xla, stopper, state, strategy, chief)
                finally:
                    shutil.rmtree(run / CACHE_DIR, ignore_errors=True)
                    if not chief:
                        shutil.rmtree(run, ignore_errors=True)
        finally:
            keras.mixed_precision.set_dtype_policy(previous_policy)


def _open_run(config: TrainConfig, data, chief: bool, resume: Path | None, say) -> Path:
    """The run folder to write into: a new one, the resumed one, or a worker's throwaway copy."""
    if not chief:
        # Workers train in step with the chief and need somewhere for the same files; none is a result.
        run = Path(tempfile.mkdtemp(prefix="tlcli-worker-"))
        if resume is not None:
            shutil.copytree(resume / checkpoint.LAST, run / checkpoint.LAST)
        return run
    if resume is not None:
        for leftover in resume.glob(".*.tmp*"):  # temporaries of a process killed mid-write
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return resume
    run = create_run_dir(config.project, config.name)
    write_json(run / "config.json", {**config.to_dict(), "class_names": data.class_names, "versions": versions()})
    write_text(run / "labels.txt", "\n".join(data.class_names) + "\n")
    if data.skipped:
        write_csv(run / "skipped.csv", ["path", "reason"], data.skipped)
    return run


def _fit(config: TrainConfig, data, classifier, run: Path, progress_console: Console, quiet: bool,
         xla: bool, stopper: checkpoint.GracefulStop, state: dict | None, strategy, chief: bool) -> TrainResult:
    say = (lambda *a: None) if quiet else progress_console.print
    resumed = state is not None
    state = state or {"phase": 1, "epoch": 0, "history": [], "best": None, "best_epoch": None}
    n_classes = len(data.class_names)
    weights = class_weights(data.train.labels, n_classes) if config.class_weights == "auto" else None
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    augmenter = build_augmenter(config.augment, config.image_size, config.seed)
    history: list[dict] = state["history"]
    keeper = BestKeeper(classifier, run / "model.keras", state["best"], state["best_epoch"], len(history))
    if state["best"] is not None and (run / "model.keras").exists():
        keeper.best_weights = load_classifier(run / "model.keras").get_weights()
    stop_check = StopCheck(stopper)
    seconds: dict[str, float] = {}
    throughput: dict[str, float] = {}
    to_onehot = np.eye(n_classes, dtype=np.float32)

    # Phase 2 trains on cached activations only when BatchNorm is frozen (pretrained weights);
    # otherwise the stem is the whole frozen feature extractor and phase 2 runs end to end.
    cached_phase2 = config.fine_tune_epochs > 0 and pretrained(config.weights)
    freeze_backbone(classifier)
    stem, top = split_backbone(classifier, config.unfreeze) if cached_phase2 else (feature_model(classifier), None)
    cached_phase2 = cached_phase2 and top is not None

    phase, trainer = state["phase"], None
    try:
        # ---- the frozen stem, once per view
        start = time.perf_counter()
        with make_progress(progress_console, quiet) as progress:
            step = Step(progress, "Caching", check=stopper.check)
            step.start(len(data.train) * config.cache_views + len(data.val))
            activations = cache.compute(stem, augmenter, data.train.images, data.train.labels, data.val.images,
                                        data.val.labels, config.cache_views, config.batch_size,
                                        config.cache_ram_gb * 2**30, run / CACHE_DIR, step)
            train_x, val_x = cache.pooled_features(top, activations, config.batch_size)
            step.done(f"{config.cache_views} view(s) in {activations.seconds:.1f}s"
                      + (" (spilled to disk)" if activations.spilled else ""))

            # ---- phase 1: the head, on pooled features of every cached view
            if phase == 1:
                trainer = head_model(classifier)
                trainer.compile(optimizer=keras.optimizers.Adam(config.lr), loss=loss, metrics=["accuracy"],
                                jit_compile=xla)
                if resumed:
                    checkpoint.restore_optimizer(run, trainer.optimizer, trainer.trainable_variables)
                distribute.prepare_for_fit(trainer, strategy)
                trainer.fit(
                    train_x, to_onehot[np.tile(data.train.labels, config.cache_views)],
                    batch_size=config.batch_size, epochs=config.epochs, initial_epoch=state["epoch"], shuffle=True,
                    class_weight=weights, validation_data=(val_x, to_onehot[data.val.labels]), verbose=0,
                    callbacks=[stop_check,
                               EpochBars(progress, "Head", config.epochs, -(-len(train_x) // config.batch_size)),
                               HistoryRecorder(history, phase=1, lr=config.lr), keeper,
                               *_worker_backup(strategy, run, 1)],
                )
        seconds["phase1"] = time.perf_counter() - start
        throughput["phase1_images_per_second"] = (len(train_x) + len(val_x)) / seconds["phase1"]

        # ---- phase 2: the top of the backbone and the head, at a lower learning rate
        if config.fine_tune_epochs > 0:
            if phase == 1:
                keeper.restore()  # continue from the best head, not the last one
            resuming_phase2, phase = resumed and phase == 2, 2
            unfrozen = unfreeze_top(classifier, config.unfreeze, freeze_batchnorm=pretrained(config.weights))
            trainable, frozen = count_params(classifier)
            say(f"Fine-tuning the top {unfrozen} backbone layers ({trainable:,} trainable / {frozen:,} frozen "
                f"parameters)" + ("" if cached_phase2 else ", end to end"))
            if cached_phase2:
                trainer = top_classifier(top, classifier)
                train_data = cache.RandomViews(activations, n_classes, config.batch_size, config.seed, weights)
                val_data = (activations.val, to_onehot[data.val.labels])
                fit_weights = None  # RandomViews yields the class weights as sample weights
            else:
                trainer = keras.Sequential([augmenter, classifier], name="trainer")
                train_data = make_dataset(data.train, n_classes, config.batch_size, shuffle=True, seed=config.seed)
                val_data = make_dataset(data.val, n_classes, config.batch_size, shuffle=False)
                fit_weights = weights
            trainer.compile(optimizer=keras.optimizers.Adam(config.fine_tune_lr), loss=loss, metrics=["accuracy"],
                            jit_compile=xla)
            if resuming_phase2:
                checkpoint.restore_optimizer(run, trainer.optimizer, trainer.trainable_variables)
            distribute.prepare_for_fit(trainer, strategy)
            start = time.perf_counter()
            with make_progress(progress_console, quiet) as progress:
                trainer.fit(
                    train_data, validation_data=val_data, validation_batch_size=config.batch_size if cached_phase2 else None,
                    epochs=config.fine_tune_epochs, initial_epoch=state["epoch"] if resuming_phase2 else 0,
                    class_weight=fit_weights, verbose=0, shuffle=False,
                    callbacks=[stop_check,
                               EpochBars(progress, "Tune", config.fine_tune_epochs,
                                         -(-len(data.train) // config.batch_size), first_epoch=config.epochs),
                               HistoryRecorder(history, phase=2, lr=config.fine_tune_lr, offset=config.epochs),
                               keeper, *_worker_backup(strategy, run, 2)],
                )
            seconds["phase2"] = time.perf_counter() - start
            throughput["phase2_images_per_second"] = len(data.train) * config.fine_tune_epochs / seconds["phase2"]
    except checkpoint.StopRequested:
        keeper.flush()
        done_in_phase = sum(1 for row in history if row["phase"] == phase)
        checkpoint.save_last(run, classifier, trainer.optimizer if trainer is not None else None,
                             {"phase": phase, "epoch": done_in_phase, "history": history, "best": keeper.best,
                              "best_epoch": keeper.best_epoch})
        _write_history(run, history)
        kept = f"the best model so far is in {run / 'model.keras'}; " if keeper.best is not None else ""
        raise TlcliError(f"interrupted: {kept}continue with `tlcli train --resume {run}`.", exit_code=130) from None

    keeper.restore()
    # The best epoch's validation figures are those of model.keras: the cached stem computes
    # exactly what the full model does (tests check this against model.keras on the images).
    val_accuracy, val_loss = keeper.best[0], -keeper.best[1]
    metrics = {
        "val_accuracy": float(val_accuracy),
        "val_loss": float(val_loss),
        "best_epoch": keeper.best_epoch,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test) if data.test else 0,
        "n_skipped": len(data.skipped),
        "n_classes": n_classes,
        "seconds": {**{k: round(v, 2) for k, v in seconds.items()}, "total": round(sum(seconds.values()), 2)},
        **{k: round(v, 1) for k, v in throughput.items()},
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "resumed": resumed,
    }
    _write_history(run, history)
    write_json(run / "metrics.json", metrics)
    checkpoint.remove_last(run)
    if chief:
        mark_complete(run)
    return TrainResult(run, metrics, history)


def _worker_backup(strategy, run: Path, phase: int) -> list:
    """With several workers, Keras's backup-and-restore lets a restarted worker rejoin mid-phase."""
    if not distribute.is_multiworker(strategy):
        return []
    return [keras.callbacks.BackupAndRestore(str(run / CACHE_DIR / f"backup_phase{phase}"))]


def _write_history(run: Path, history: list[dict]) -> None:
    write_csv(run / "history.csv", HISTORY_COLUMNS, [[row[c] for c in HISTORY_COLUMNS] for row in history])
    if history:
        from tlcli.plots import plot_curves

        plot_curves(history, run / "curves.png")


class StopCheck(keras.callbacks.Callback):
    """A safe point after every training step: stops there once an interruption was requested."""

    def __init__(self, stopper: checkpoint.GracefulStop):
        super().__init__()
        self.stopper = stopper

    def on_train_batch_end(self, batch, logs=None):
        self.stopper.check()


class BestKeeper(keras.callbacks.Callback):
    """Keeps the best classifier on validation (accuracy, then loss) in memory and in model.keras.

    Writing a large model takes a while, so an improvement is written at most every
    `every_seconds`; `flush()` (at the end of each phase and on interruption) writes any pending one.
    """

    def __init__(self, classifier, path: Path, best=None, best_epoch=None, epochs_seen: int = 0,
                 every_seconds: float = 30.0):
        super().__init__()
        self.classifier, self.path, self.every = classifier, path, every_seconds
        self.best = tuple(best) if best is not None else None  # (val_accuracy, -val_loss)
        self.best_weights = None
        self.best_epoch = best_epoch
        self.epochs_seen = epochs_seen  # across both phases
        # The first write waits like the others: an early best is soon replaced, and each write costs.
        self.pending, self.last_write = False, time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen += 1
        score = (float(logs["val_accuracy"]), -float(logs["val_loss"]))
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
        current = self.classifier.get_weights()
        self.classifier.set_weights(self.best_weights)
        save_model(self.classifier, self.path)
        self.classifier.set_weights(current)
        self.pending, self.last_write = False, time.monotonic()

    def restore(self) -> None:
        if self.best_weights is not None:
            self.classifier.set_weights(self.best_weights)


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

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": self.offset + epoch + 1, "phase": self.phase, "lr": self.lr,
               "seconds": round(time.perf_counter() - self.started, 3)}
        row.update({k: round(float(logs[k]), 5) for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
        self.rows.append(row)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def versions() -> dict:
    return {"tlcli": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}
