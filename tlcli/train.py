"""`tlcli train`: the two-phase fine-tuning schedule, from DATA_DIR to a complete run directory.

    load images once -> split the classifier where phase 2's trainable part begins
    -> run the frozen stem once per view (tlcli.cache)
    -> phase 1: head on pooled features -> phase 2: unfrozen top + head on cached activations
    -> finalize: best weights in a float32 model.keras, metrics, curves; the saved file checked

Each step is one function (`cache.caching_pass`; `_phase1`, `_phase2` here; `finalize` and `complete`
in tlcli.finalize) sharing a `Session`; the Keras callbacks that record, keep the best and
checkpoint live in tlcli.callbacks.

Backbones trained from scratch (--weights none) have no BatchNorm statistics worth freezing, so
their phase 2 runs end to end on freshly augmented images instead.
Imported only by the commands that train: importing it imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from rich.console import Console

from tlcli import __version__, cache, checkpoint, distribute, objective
from tlcli.cache import CACHE_DIR
from tlcli.augment import build_augmenter
from tlcli.config import POS_WEIGHT_LIMIT, TrainConfig
from tlcli.data import class_weights, find_folder, make_dataset, targets
from tlcli.errors import TlcliError
from tlcli.labelfile import Columns
from tlcli.multilabel import positive_weights
from tlcli.check import quick_check
from tlcli.finalize import TrainResult, complete, finalize
from tlcli.model import (build_classifier, count_params, head_model, load_classifier, pretrained, top_classifier,
                         unfreeze_top)
from tlcli.callbacks import (BestKeeper, EpochBars, EpochCheckpoint, HistoryRecorder, Patience, StopCheck,
                             save_checkpoint, stopped_early, write_history)
from tlcli.progress import make_progress, quiet_native_output
from tlcli.shard import features_dataset, files_dataset, steps_per_epoch, views_dataset
from tlcli.rundir import create_run_dir, write_json, write_text
from tlcli.tensorboard import EpochEvents, EventLog



def train(config: TrainConfig | None = None, console: Console | None = None, quiet: bool = False,
          resume: str | Path | None = None, data_dir: str | Path | None = None) -> TrainResult:
    """Fine-tune `config.backbone` on `config.data_dir` and leave a complete run directory.

    With `resume` (an interrupted run folder), the run's own config.json is used and training
    continues from its `last/` checkpoint in the same phase and epoch; `data_dir` then says
    where the run's images are now, if they moved.
    """
    console = console or Console(stderr=True)
    state = saved = None
    if resume is not None:
        resume = Path(resume)
        state = checkpoint.load_state(resume)
        saved = json.loads((resume / "config.json").read_text(encoding="utf-8"))
        config = _locate_data(TrainConfig.from_dict(saved), resume, data_dir)
    config = config.resolve()
    strategy = distribute.make_strategy(config.strategy)  # first: multi-worker setup precedes other TF work
    chief = distribute.is_chief(strategy)
    quiet = quiet or not chief  # workers train in step with the chief but report nothing
    gpu = bool(tf.config.list_physical_devices("GPU"))
    mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and gpu)
    xla = config.xla == "on" or (config.xla == "auto" and gpu)
    keras.utils.set_random_seed(config.seed)
    say = (lambda *a, **k: None) if quiet else console.print
    if note := distribute.ignored_tf_config(strategy):
        say(f"[yellow]warning:[/] {note}")

    with checkpoint.GracefulStop() as stopper, contextlib.ExitStack() as closing:
        try:
            data = find_folder(config.data_dir, config.val_split, config.seed,
                               classes=saved["class_names"] if saved is not None else None,
                               columns=Columns(config.path_column, config.label_column),
                               label_delimiter=config.label_delimiter, multi_label=config.multi_label)
            config = dataclasses.replace(config, multi_label=data.multi_label)  # the data may turn it on
            kind = "labels (multi-label: each image may have several)" if data.multi_label else "classes"
            say(f"Found {len(data.train)} train and {len(data.val)} val images in {len(data.class_names)} {kind}")
        except checkpoint.StopRequested:
            raise TlcliError("interrupted before training started; nothing was written.", exit_code=130) from None
        if saved is not None and chief and saved["data_dir"] != config.data_dir:
            write_json(resume / "config.json", {**saved, "data_dir": config.data_dir})  # export and evaluate follow
        for note in data.warnings:
            say(f"[yellow]warning:[/] {note}")
        if chief and resume is None and (duplicates := quick_check(config.data_dir, data)):
            say(f"[yellow]warning:[/] {duplicates}", soft_wrap=True, highlight=False)  # one line, paths whole

        previous_policy = keras.mixed_precision.dtype_policy()
        if mixed:  # float16 compute, float32 weights; the output layer stays float32
            keras.mixed_precision.set_dtype_policy("mixed_float16")
        try:
            with distribute.fit_scope(strategy):  # models are built and trained under the strategy
                classifier = build_classifier(config.backbone, len(data.class_names), config.image_size,
                                              config.weights, config.dropout, multi_label=config.multi_label)
                run = _open_run(config, data, chief, resume, say)
                if resume is not None:
                    checkpoint.restore_weights(run, classifier)
                    say(f"Resuming [bold]{run}[/] {_resume_point(state)}")
                else:
                    say(f"Run directory: [bold]{run}[/]" + ("  (GPU" + (", mixed precision" if mixed else "") +
                                                            (", XLA" if xla else "") + ")" if gpu else ""))
                session = Session(config, data, classifier, run, console, quiet, xla, stopper, strategy, chief,
                                  state or {"phase": 1, "epoch": 0, "history": [], "best": None, "best_epoch": None},
                                  resumed=state is not None, shard=distribute.worker_shard(strategy),
                                  events=closing.enter_context(EventLog(run)) if config.tensorboard and chief else None)
                try:
                    result = _fit(session)
                finally:
                    shutil.rmtree(run / CACHE_DIR, ignore_errors=True)
                    if not chief:
                        shutil.rmtree(run, ignore_errors=True)
        finally:
            keras.mixed_precision.set_dtype_policy(previous_policy)
        if chief:  # outside the strategy: one host checks and completes the run
            labels, predicted = complete(result, session.data, config, say)
            if session.events is not None and not config.multi_label:
                session.events.confusion_matrix(labels, predicted, session.data.class_names, len(result.history))
        return result


def _resume_point(state: dict) -> str:
    if epoch := stopped_early(state["history"]).get(f"phase{state['phase']}"):
        return f"after phase {state['phase']}, which --patience ended at epoch {epoch}"
    return f"at phase {state['phase']}, epoch {state['epoch'] + 1}"


def _locate_data(config: TrainConfig, run: Path, data_dir: str | Path | None) -> TrainConfig:
    """The resumed run's config, pointed at `data_dir` when given; a one-line error if the data is gone."""
    if data_dir is not None:
        return dataclasses.replace(config, data_dir=str(data_dir))
    if "://" not in config.data_dir and not Path(config.data_dir).exists():  # a folder or a file list
        raise TlcliError(f"the images of {run} were in {config.data_dir}, which is gone; if they moved, "
                         f"pass their new place: tlcli train --resume {run} NEW_DATA_DIR")
    return config


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
    return run


@dataclass
class Session:
    """What every step of one training run shares."""

    config: TrainConfig
    data: object  # tlcli.data.Folder
    classifier: keras.Model
    run: Path
    console: Console
    quiet: bool
    xla: bool
    stopper: checkpoint.GracefulStop
    strategy: object
    chief: bool
    state: dict  # phase, epoch, history, best, best_epoch: fresh, or from last/ when resuming
    resumed: bool = False
    shard: tuple[int, int] = (0, 1)  # (this worker, workers): each reads its own shard of the files
    n_train_total: int = 0  # training images of every shard
    events: EventLog | None = None  # --tensorboard, on the chief
    pos_weight: np.ndarray | None = None  # multi-label, class weights "auto": each label's positive weight
    seconds: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)

    def say(self, *args) -> None:
        if not self.quiet:
            self.console.print(*args)

    @property
    def n_classes(self) -> int:
        return len(self.data.class_names)

    def targets(self, labels) -> np.ndarray:
        return targets(labels, self.n_classes)


def _fit(s: Session) -> TrainResult:
    """cache -> phase 1 -> phase 2 -> finalize; on interruption, a resumable checkpoint."""
    config = s.config
    history: list[dict] = s.state["history"]
    augmenter = build_augmenter(config.augment, config.image_size, config.seed)
    phase, trainer, keeper = s.state["phase"], None, None
    try:
        top, activations, pooled = cache.caching_pass(s, augmenter)  # may drop files and classes that failed
        if s.events is not None and not s.resumed:
            s.events.augmented_images(s.data.train, config.augment, config.image_size, config.seed)
        keeper = _keeper(s)
        auto = config.class_weights == "auto"
        # (a worker's shard has every count-th file of a sorted list: its class mix is the whole's)
        if config.multi_label:  # weighted inside the loss, label by label: no weight per image
            s.pos_weight, weights = positive_weights(s.data.train.labels, POS_WEIGHT_LIMIT) if auto else None, None
        else:
            weights = class_weights(s.data.train.labels, s.n_classes) if auto else None
        ended = stopped_early(history)  # a resumed run does not reopen a phase --patience ended
        if phase == 1 and "phase1" not in ended:
            trainer = _phase1(s, keeper, pooled, weights)
        if config.fine_tune_epochs > 0 and "phase2" not in ended:
            if phase == 1:
                keeper.restore()  # continue from the best head, not the last one
            resuming_phase2, phase = s.resumed and phase == 2, 2
            trainer = _compile_phase2(s, top, augmenter)
            if resuming_phase2:
                checkpoint.restore_optimizer(s.run, trainer.optimizer, trainer.trainable_variables)
            _phase2(s, keeper, trainer, activations, weights, cached=top is not None)
    except checkpoint.StopRequested:
        keeper = keeper or _keeper(s)  # interrupted while caching: the checkpoint restarts phase 1
        keeper.flush()
        save_checkpoint(s.run, s.classifier, trainer.optimizer if trainer is not None else None, phase, history, keeper)
        write_history(s.run, history)
        kept = f"the best model so far is in {s.run / 'model.keras'}; " if keeper.best is not None else ""
        raise TlcliError(f"interrupted: {kept}continue with `tlcli train --resume {s.run}`.", exit_code=130) from None
    return finalize(s, keeper)


def _keeper(s: Session) -> BestKeeper:
    history = s.state["history"]
    return BestKeeper(s.classifier, s.run / "model.keras", s.state["best"], s.state["best_epoch"], len(history),
                      saver=float32_saver(s.classifier), best_weights=_saved_best(s), multi_label=s.config.multi_label)


def _saved_best(s: Session) -> list | None:
    """A resumed run's best weights: from its checkpoint, else (older checkpoints) from model.keras."""
    if not s.resumed or s.state["best"] is None:
        return None
    saved = checkpoint.best_weights(s.run)
    if saved is None and (s.run / "model.keras").exists():
        saved = load_classifier(s.run / "model.keras").get_weights()
    return saved


def _callbacks(s: Session, keeper: BestKeeper, progress, phase: int, label: str, epochs: int, steps: int,
               lr: float) -> list:
    history = s.state["history"]
    offset = sum(1 for row in history if row["phase"] < phase)  # epochs count on across phases, as run
    # Patience marks the row HistoryRecorder appends before EpochCheckpoint saves it.
    patience = [Patience(history, phase, s.config.patience, s.config.multi_label)] if s.config.patience else []
    events = [EpochEvents(s.events, history)] if s.events is not None else []
    return [StopCheck(s.stopper), EpochBars(progress, label, epochs, steps, first_epoch=offset),
            HistoryRecorder(history, phase=phase, lr=lr, offset=offset), *patience, *events, keeper,
            EpochCheckpoint(s.run, s.classifier, keeper, history, phase), *_worker_backup(s.strategy, s.run, phase)]


def _say_if_stopped(s: Session, phase: int, label: str) -> None:
    if epoch := stopped_early(s.state["history"]).get(f"phase{phase}"):
        s.say(f"{label} stopped early at epoch {epoch}: {s.config.patience} epoch(s) without a better "
              f"validation score (--patience {s.config.patience})")


def _phase1(s: Session, keeper: BestKeeper, pooled, weights) -> keras.Model:
    """The head alone, on the pooled features of every cached view."""
    config, data = s.config, s.data
    train_x, val_x = pooled
    trainer = head_model(s.classifier)
    trainer.compile(optimizer=keras.optimizers.Adam(config.lr), loss=objective.loss(config, s.pos_weight),
                    metrics=objective.metrics(config, s.n_classes), jit_compile=s.xla)
    if s.resumed:
        checkpoint.restore_optimizer(s.run, trainer.optimizer, trainer.trainable_variables)
    distribute.prepare_for_fit(trainer, s.strategy)
    y = s.targets(np.concatenate([data.train.labels] * config.cache_views))
    fit_args = dict(x=train_x, y=y, batch_size=config.batch_size, shuffle=True, class_weight=weights)
    steps = -(-len(train_x) // config.batch_size)
    if s.shard[1] > 1:  # this worker's own features, 1/N of each global batch
        worker_batch = max(1, config.batch_size // s.shard[1])
        sample_weights = None if weights is None else np.asarray([weights[int(i)] for i in y.argmax(1)], np.float32)
        steps = steps_per_epoch(s.n_train_total * config.cache_views, s.shard[1], worker_batch)
        fit_args = dict(x=features_dataset(train_x, y, sample_weights, worker_batch, config.seed),
                        steps_per_epoch=steps)
    start = time.perf_counter()
    with make_progress(s.console, s.quiet) as progress, quiet_native_output():
        trainer.fit(
            **fit_args, epochs=config.epochs, initial_epoch=s.state["epoch"],
            validation_data=(val_x, s.targets(data.val.labels)), verbose=0,
            callbacks=_callbacks(s, keeper, progress, 1, "Head", config.epochs, steps, config.lr),
        )
    _say_if_stopped(s, 1, "Head training")
    s.seconds["phase1"] = time.perf_counter() - start + s.seconds.pop("cache", 0.0)
    s.throughput["phase1_images_per_second"] = (len(train_x) + len(val_x)) / s.seconds["phase1"]
    return trainer


def _compile_phase2(s: Session, top, augmenter) -> keras.Model:
    """Unfreeze the top of the backbone; the trainer runs on cached activations or end to end."""
    config = s.config
    unfrozen = unfreeze_top(s.classifier, config.unfreeze, freeze_batchnorm=pretrained(config.weights))
    trainable, frozen = count_params(s.classifier)
    s.say(f"Fine-tuning the top {unfrozen} backbone layers ({trainable:,} trainable / {frozen:,} frozen "
          f"parameters)" + ("" if top is not None else ", end to end"))
    trainer = top_classifier(top, s.classifier) if top is not None else \
        keras.Sequential([augmenter, s.classifier], name="trainer")
    trainer.compile(optimizer=keras.optimizers.Adam(_fine_tune_rate(config, _phase2_steps(s)[1])),
                    loss=objective.loss(config, s.pos_weight),
                    metrics=objective.metrics(config, s.n_classes), jit_compile=s.xla)
    return trainer


def _phase2_steps(s: Session) -> tuple[int, int]:
    """Phase 2's batch per worker (the global batch is split between workers) and steps per epoch."""
    workers, batch_size = s.shard[1], s.config.batch_size
    if workers == 1:
        return batch_size, -(-len(s.data.train) // batch_size)
    batch = max(1, batch_size // workers)
    return batch, steps_per_epoch(s.n_train_total, workers, batch)


def _fine_tune_rate(config, steps: int):
    """Phase 2's learning rate: a number, or a cosine decay over all of phase 2's steps (the
    optimizer's step count is checkpointed, so a resumed run goes on along the same curve)."""
    if config.fine_tune_schedule == "constant" or config.fine_tune_epochs < 1:
        return config.fine_tune_lr
    return keras.optimizers.schedules.CosineDecay(config.fine_tune_lr, decay_steps=steps * config.fine_tune_epochs)


def _phase2(s: Session, keeper: BestKeeper, trainer: keras.Model, activations, weights, cached: bool) -> None:
    """The top of the backbone and the head, at the lower fine-tuning rate."""
    config, data = s.config, s.data
    workers = s.shard[1]
    batch, steps = _phase2_steps(s)
    if cached:
        train_data = cache.RandomViews(activations, s.n_classes, batch, config.seed, weights)
        val_data = cache.validation_data(activations, s.n_classes, config.batch_size)
        weights = None  # RandomViews yields the class weights as sample weights
        if workers > 1:
            train_data = views_dataset(train_data, s.n_classes)
    else:
        train_data = make_dataset(data.train, s.n_classes, config.batch_size, shuffle=True, seed=config.seed,
                                  size=config.image_size) if workers == 1 else \
            files_dataset(data.train, s.n_classes, batch, config.seed, config.image_size)
        val_data = make_dataset(data.val, s.n_classes, config.batch_size, shuffle=False, size=config.image_size)
    distribute.prepare_for_fit(trainer, s.strategy)
    resuming = s.resumed and s.state["phase"] == 2
    epochs_before = sum(1 for row in s.state["history"] if row["phase"] == 2)
    start = time.perf_counter()
    with make_progress(s.console, s.quiet) as progress, quiet_native_output():
        trainer.fit(
            train_data, validation_data=val_data,
            validation_batch_size=config.batch_size if isinstance(val_data, tuple) else None,
            epochs=config.fine_tune_epochs, initial_epoch=s.state["epoch"] if resuming else 0,
            class_weight=weights, verbose=0, shuffle=False, steps_per_epoch=steps if workers > 1 else None,
            callbacks=_callbacks(s, keeper, progress, 2, "Tune", config.fine_tune_epochs, steps,
                                 config.fine_tune_lr),
        )
    s.seconds["phase2"] = time.perf_counter() - start
    epochs_run = sum(1 for row in s.state["history"] if row["phase"] == 2) - epochs_before
    s.throughput["phase2_images_per_second"] = len(data.train) * epochs_run / s.seconds["phase2"]
    _say_if_stopped(s, 2, "Fine-tuning")


def float32_saver(classifier: keras.Model) -> keras.Model:
    """The model written to model.keras: the classifier, or a float32 twin of a mixed-precision one."""
    if all(layer.dtype_policy.name == "float32" for layer in classifier.layers):
        return classifier
    from tlcli.model import float32_copy

    return float32_copy(classifier)


def _worker_backup(strategy, run: Path, phase: int) -> list:
    """With several workers, Keras's backup-and-restore lets a restarted worker rejoin mid-phase."""
    if not distribute.is_multiworker(strategy):
        return []
    return [keras.callbacks.BackupAndRestore(str(run / CACHE_DIR / f"backup_phase{phase}"))]


def versions() -> dict:
    return {"tlcli": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}
