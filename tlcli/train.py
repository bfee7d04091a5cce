"""`tlcli train`: the two-phase fine-tuning schedule, from DATA_DIR to a complete run directory.

Phase 1 trains the head on a frozen backbone. Because the backbone's BatchNorm runs in inference
mode and dropout sits in the head, the backbone's pooled features of an image never change during
phase 1: they are computed once per view (one clean view plus augmented ones) and the head is
trained on them, instead of running the backbone forward again every epoch.
Phase 2 unfreezes the top of the backbone and fine-tunes end to end at a lower learning rate.

Imported only by the commands that train: importing it imports TensorFlow.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from rich.console import Console

from tlcli import __version__
from tlcli.config import TrainConfig
from tlcli.errors import TlcliError
from tlcli.progress import Step, format_logs, make_progress
from tlcli.rundir import create_run_dir, mark_complete, save_model, write_csv, write_json, write_text

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


def train(config: TrainConfig, console: Console | None = None, quiet: bool = False) -> TrainResult:
    """Fine-tune `config.backbone` on `config.data_dir` and leave a complete run directory."""
    console = console or Console(stderr=True)
    config = config.resolve()
    from tlcli.augment import build_augmenter
    from tlcli.data import class_weights, load_folder, make_dataset
    from tlcli.model import build_classifier, count_params, freeze_backbone, pretrained, unfreeze_top

    keras.utils.set_random_seed(config.seed)
    size = config.image_size
    with make_progress(console, quiet) as progress:
        loading = Step(progress, "Loading images")
        data = load_folder(config.data_dir, size, config.val_split, config.seed, loading)
        loading.done(f"{len(data.train)} train, {len(data.val)} val, {len(data.skipped)} skipped")
    for note in data.warnings:
        console.print(f"[yellow]warning:[/] {note}") if not quiet else None
    if data.skipped and not quiet:
        console.print(f"[yellow]skipped {len(data.skipped)} unreadable file(s)[/]; see skipped.csv")

    classifier = build_classifier(config.backbone, len(data.class_names), size, config.weights, config.dropout)
    run = create_run_dir(config.project, config.name)
    if not quiet:
        console.print(f"Run directory: [bold]{run}[/]")
    write_json(run / "config.json", {**config.to_dict(), "class_names": data.class_names, "versions": versions()})
    write_text(run / "labels.txt", "\n".join(data.class_names) + "\n")
    if data.skipped:
        write_csv(run / "skipped.csv", ["path", "reason"], data.skipped)

    n_classes = len(data.class_names)
    weights = class_weights(data.train.labels, n_classes) if config.class_weights == "auto" else None
    keeper = BestKeeper(classifier, run / "model.keras")
    history: list[dict] = []
    seconds: dict[str, float] = {}
    throughput: dict[str, float] = {}
    val_ds = make_dataset(data.val, n_classes, config.batch_size, shuffle=False)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    augmenter = build_augmenter(config.augment, size, config.seed)

    interrupted = False
    try:
        # ---- phase 1: head on cached features of a frozen backbone
        freeze_backbone(classifier)
        start = time.perf_counter()
        with make_progress(console, quiet) as progress:
            features = cache_features(classifier, augmenter, data, config, progress)
            head = features.head
            head.compile(optimizer=keras.optimizers.Adam(config.lr), loss=loss, metrics=["accuracy"])
            steps = -(-len(features.train_y) // config.batch_size)
            head.fit(
                features.train_dataset(config.batch_size, config.seed, n_classes),
                validation_data=features.val_dataset(config.batch_size, n_classes),
                epochs=config.epochs,
                class_weight=weights,
                verbose=0,
                shuffle=False,  # the dataset shuffles itself
                callbacks=[EpochBars(progress, "Head", config.epochs, steps),
                           HistoryRecorder(history, phase=1, lr=config.lr), keeper],
            )
        seconds["phase1"] = time.perf_counter() - start
        throughput["phase1_images_per_second"] = len(data.train) * config.cache_views / max(features.seconds, 1e-9)

        # ---- phase 2: fine-tune the top of the backbone end to end
        if config.fine_tune_epochs > 0:
            keeper.restore()  # continue from the best head, not the last one
            unfrozen = unfreeze_top(classifier, config.unfreeze, freeze_batchnorm=pretrained(config.weights))
            trainer = keras.Sequential([augmenter, classifier], name="trainer")
            trainer.compile(optimizer=keras.optimizers.Adam(config.fine_tune_lr), loss=loss, metrics=["accuracy"])
            if not quiet:
                trainable, frozen = count_params(classifier)
                console.print(f"Phase 2: {unfrozen} backbone layers unfrozen "
                              f"({trainable:,} trainable / {frozen:,} frozen parameters)")
            start = time.perf_counter()
            steps = -(-len(data.train) // config.batch_size)
            with make_progress(console, quiet) as progress:
                trainer.fit(
                    make_dataset(data.train, n_classes, config.batch_size, shuffle=True, seed=config.seed),
                    validation_data=val_ds,
                    epochs=config.fine_tune_epochs,
                    class_weight=weights,
                    verbose=0,
                    shuffle=False,  # the dataset shuffles itself
                    callbacks=[EpochBars(progress, "Fine-tune", config.fine_tune_epochs, steps,
                                              first_epoch=config.epochs),
                               HistoryRecorder(history, phase=2, lr=config.fine_tune_lr, offset=config.epochs),
                               keeper],
                )
            seconds["phase2"] = time.perf_counter() - start
            throughput["phase2_images_per_second"] = len(data.train) * config.fine_tune_epochs / seconds["phase2"]
    except KeyboardInterrupt:
        interrupted = True

    keeper.restore()
    classifier.compile(loss=loss, metrics=["accuracy"])
    val_loss, val_accuracy = classifier.evaluate(val_ds, verbose=0)
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
        "interrupted": interrupted,
    }
    write_csv(run / "history.csv", HISTORY_COLUMNS, [[row[c] for c in HISTORY_COLUMNS] for row in history])
    write_json(run / "metrics.json", metrics)
    if history:
        from tlcli.plots import plot_curves

        plot_curves(history, run / "curves.png")
    if interrupted:
        raise TlcliError(f"interrupted; the best model so far is in {run / 'model.keras'}.", exit_code=130)
    mark_complete(run)
    return TrainResult(run, metrics, history)


@dataclass
class CachedFeatures:
    """Pooled backbone features: train ones for every view, val ones for the clean view."""

    head: object
    train_x: np.ndarray  # (views * n_train, features)
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    seconds: float

    def train_dataset(self, batch_size: int, seed: int, n_classes: int):
        ds = tf.data.Dataset.from_tensor_slices((self.train_x, tf.one_hot(self.train_y, n_classes)))
        return ds.shuffle(len(self.train_y), seed=seed, reshuffle_each_iteration=True).batch(batch_size)

    def val_dataset(self, batch_size: int, n_classes: int):
        return tf.data.Dataset.from_tensor_slices((self.val_x, tf.one_hot(self.val_y, n_classes))).batch(batch_size)


def cache_features(classifier, augmenter, data, config: TrainConfig, progress) -> CachedFeatures:
    """Run the frozen backbone once per view of every training image and once per val image."""
    from tlcli.model import feature_model, head_model

    extract = feature_model(classifier)
    batch = config.batch_size
    n_views = config.cache_views
    step = Step(progress, "Caching features")
    step.start(len(data.train) * n_views + len(data.val))
    start = time.perf_counter()

    size = data.train.images.shape[1]
    signature = [tf.TensorSpec((None, size, size, 3), tf.uint8)]

    @tf.function(input_signature=signature)
    def clean_view(images):
        return extract(tf.cast(images, tf.float32), training=False)

    @tf.function(input_signature=signature)
    def augmented_view(images):
        return extract(augmenter(tf.cast(images, tf.float32), training=True), training=False)

    def run(images, augment):
        view = augmented_view if augment else clean_view
        out = []
        for i in range(0, len(images), batch):
            out.append(view(images[i:i + batch]).numpy())
            step.advance(len(images[i:i + batch]))
        return np.concatenate(out) if out else np.zeros((0, extract.output_shape[-1]), np.float32)

    train_x = np.concatenate([run(data.train.images, augment=v > 0) for v in range(n_views)])
    train_y = np.tile(data.train.labels, n_views)
    val_x = run(data.val.images, augment=False)
    seconds = time.perf_counter() - start
    step.done(f"{n_views} view(s) in {seconds:.1f}s")
    return CachedFeatures(head_model(classifier), train_x, train_y, val_x, data.val.labels, seconds)


class BestKeeper(keras.callbacks.Callback):
    """Keeps the best classifier on validation (accuracy, then loss) on disk and in memory."""

    def __init__(self, classifier, path: Path):
        super().__init__()
        self.classifier, self.path = classifier, path
        self.best = None  # (val_accuracy, -val_loss)
        self.best_weights = None
        self.best_epoch = None
        self.epochs_seen = 0  # across both phases

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_seen += 1
        score = (float(logs["val_accuracy"]), -float(logs["val_loss"]))
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, self.epochs_seen
            self.best_weights = self.classifier.get_weights()
            save_model(self.classifier, self.path)

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
