"""Outputs of the frozen part of the model, computed once per view and trained on in both phases.

With BatchNorm in inference mode, the frozen layers of a pretrained backbone are a fixed function
of their input: running them again every epoch, as the hand-written recipe does, recomputes the
same numbers. tlcli runs them once per view of each image (a clean view plus augmented ones) and
keeps the result here, in memory or, past a budget, in a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import dataclasses
import json
import time

import keras
import numpy as np
import tensorflow as tf

from tlcli.data import drop_unusable, targets
from tlcli.errors import TlcliError
from tlcli.labelfile import skipped_count
from tlcli.model import build_classifier, feature_model, freeze_backbone, pretrained, split_backbone
from tlcli.progress import Step, make_progress
from tlcli.rundir import write_csv, write_json, write_text
from tlcli.shard import shard_of
from tlcli.spill import DiskArray

CACHE_DIR = ".cache"  # inside the run folder; removed when training ends


@dataclass
class ActivationCache:
    """`train[v, i]` is the stem's output for view v of training image i; `val[i]` for val image i."""

    train: np.ndarray  # (views, n_train, ...)
    train_labels: np.ndarray  # as tlcli.data.Split's: class indices, or multi-hot rows
    val: np.ndarray  # (n_val, ...)
    val_labels: np.ndarray
    seconds: float
    spilled: bool

    @property
    def views(self) -> int:
        return self.train.shape[0]


def allocate(shape: tuple, dtype, budget_bytes: float, spill_dir: Path, name: str, stacked: bool = False):
    """(array, spilled): in memory, or a `spill.DiskArray` in `spill_dir` when larger than the budget.
    `stacked`: the shape is (views, n, ...) and `array[v]` is one view."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes <= budget_bytes:
        return np.empty(shape, dtype), False
    spill_dir.mkdir(parents=True, exist_ok=True)
    if stacked:
        return DiskArray.stacked(spill_dir / f"{name}.bin", shape[0], shape[1], shape[2:], dtype), True
    return DiskArray(spill_dir / f"{name}.bin", shape, dtype), True


def compute(stem: keras.Model, augmenter: keras.Model, train_paths: list[str], val_paths: list[str], size: int,
            views: int, batch_size: int, budget_bytes: float, spill_dir: Path,
            step=None) -> tuple[ActivationCache, dict[str, str]]:
    """Run `stem` over every view of the training images (view 0 clean) and over the val images.

    The files stream through the decoder a few batches at a time, and each is decoded once: all
    its views come from that one decode. Returns the cache and {path: reason} for the files that
    could not be decoded; their rows hold nothing and are dropped with `keep`.
    """
    import time

    from tlcli.images import decode_batches

    signature = [tf.TensorSpec((None, size, size, 3), tf.uint8)]

    @tf.function(input_signature=signature)
    def clean(images):
        return stem(tf.cast(images, tf.float32), training=False)

    @tf.function(input_signature=signature)
    def augmented(images):
        return stem(augmenter(tf.cast(images, tf.float32), training=True), training=False)

    out_shape = tuple(stem.output.shape[1:])
    dtype = stem.output.dtype if isinstance(stem.output.dtype, str) else stem.output.dtype.name
    n_train, n_val = len(train_paths), len(val_paths)
    budget_train = budget_bytes * n_train * views / max(1, n_train * views + n_val)
    train, spilled = allocate((views, n_train, *out_shape), dtype, budget_train, spill_dir, "train", stacked=True)
    val, spilled_val = allocate((n_val, *out_shape), dtype, budget_bytes - budget_train, spill_dir, "val")
    failed: dict[str, str] = {}
    start = time.perf_counter()

    def fill(paths, targets):
        for rows, images, failures in decode_batches(paths, size, batch_size):
            failed.update((str(paths[i]), reason) for i, reason in failures)
            if rows:
                for target, run in targets:
                    target[np.asarray(rows)] = run(images).numpy()
            if step:
                step.advance((len(rows) + len(failures)) * len(targets))

    fill(train_paths, [(train[v], augmented if v else clean) for v in range(views)])
    fill(val_paths, [(val, clean)])
    cache = ActivationCache(train, np.zeros(n_train, np.int32), val, np.zeros(n_val, np.int32),
                            time.perf_counter() - start, spilled or spilled_val)
    return cache, failed


def keep(cache: ActivationCache, train_rows: list[int], train_labels: np.ndarray, val_rows: list[int],
         val_labels: np.ndarray) -> ActivationCache:
    """The cache with only `train_rows` and `val_rows` (in that order), moved up in place so a
    file-backed cache is never copied into memory; labels are those of the kept rows."""
    def compact(array, rows, axis):
        if isinstance(array, DiskArray):
            return array.compact(rows)
        for new, old in enumerate(rows):
            if new != old:
                if axis:
                    array[:, new] = array[:, old]
                else:
                    array[new] = array[old]
        return array[:, :len(rows)] if axis else array[:len(rows)]

    def as_labels(labels):
        labels = np.asarray(labels)
        return labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int32)

    return ActivationCache(compact(cache.train, train_rows, 1), as_labels(train_labels),
                           compact(cache.val, val_rows, 0), as_labels(val_labels), cache.seconds, cache.spilled)


def pooled_features(top: keras.Model | None, cache: ActivationCache, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train features of every view stacked, val features): the head's inputs in phase 1."""
    if top is None:  # the stem already ends in pooled features (small: one vector an image)
        return np.concatenate([np.asarray(cache.train[v]) for v in range(cache.views)]), np.asarray(cache.val)

    # A compiled function: calling the model eagerly batch by batch costs more than the maths.
    forward = tf.function(lambda x: top(x, training=False),
                          input_signature=[tf.TensorSpec((None, *cache.val.shape[1:]), cache.val.dtype)])

    def run(array):
        if not len(array):
            return np.zeros((0, top.output.shape[-1]), np.float32)
        return np.concatenate([forward(np.asarray(array[i:i + batch_size])).numpy()
                               for i in range(0, len(array), batch_size)])

    return np.concatenate([run(cache.train[v]) for v in range(cache.views)]), run(cache.val)


def caching_pass(s, augmenter):
    """The caching step of training Session `s`: split the classifier and run its frozen stem
    once per view of every image (this worker's shard of them, under multiworker).

    Phase 2 trains on cached activations only when BatchNorm is frozen (pretrained weights);
    otherwise the stem is the whole frozen feature extractor and phase 2 runs end to end.
    The files stream through the decoder once; those that fail are skipped (skipped.csv), and a
    class left with no usable image is left out, its head rebuilt without it.
    Returns (top or None, activations, (pooled train, pooled val)).
    """
    config, found = s.config, s.data
    index, count = s.shard
    if count > 1:
        found = dataclasses.replace(found, train=shard_of(found.train, index, count))
    freeze_backbone(s.classifier)
    cached_phase2 = config.fine_tune_epochs > 0 and pretrained(config.weights)
    stem, top = _split(s.classifier, config, cached_phase2)
    start = time.perf_counter()
    with make_progress(s.console, s.quiet) as progress:
        step = Step(progress, "Caching", check=s.stopper.check)
        step.start(len(found.train) * config.cache_views + len(found.val))
        activations, failed = compute(stem, augmenter, found.train.paths, found.val.paths, config.image_size,
                                            config.cache_views, config.batch_size, config.cache_ram_gb * 2**30,
                                            s.run / CACHE_DIR, step)
        s.data = drop_unusable(found, failed, drop_classes=count == 1)
        s.n_train_total = len(s.data.train) if count == 1 else len(s.data.train) * count
        activations = keep(activations, _rows(found.train, s.data.train), s.data.train.labels,
                                 _rows(found.val, s.data.val), s.data.val.labels)
        if s.data.class_names != found.class_names:
            s.classifier = _without_lost_classes(s, found.class_names)
            stem, top = _split(s.classifier, config, cached_phase2)
        pooled = pooled_features(top, activations, config.batch_size)
        step.done(f"{config.cache_views} view(s) in {activations.seconds:.1f}s"
                  + (" (spilled to disk)" if activations.spilled else ""))
    s.seconds["cache"] = time.perf_counter() - start
    _report_skipped(s, found)
    return top, activations, pooled


def _split(classifier, config, cached_phase2: bool):
    """(stem, top): top is None when phase 2 runs end to end, and the stem is the feature model."""
    if cached_phase2:
        stem, top = split_backbone(classifier, config.unfreeze)
        if top is not None:
            return stem, top
    return feature_model(classifier), None


def _rows(before, after) -> list[int]:
    """Where each of `after`'s paths was in `before` (after is before without some paths)."""
    where = {p: i for i, p in enumerate(before.paths)}
    return [where[p] for p in after.paths]


def _without_lost_classes(s, found_classes: list[str]) -> keras.Model:
    """The classifier rebuilt for the classes that kept usable images, every weight but the head's
    copied, so the cached activations of its frozen stem stay valid."""
    if s.resumed:
        raise TlcliError(f"the classes in {s.config.data_dir} changed since {s.run} started; cannot resume.")
    config, old = s.config, s.classifier
    new = build_classifier(config.backbone, s.n_classes, config.image_size, config.weights, config.dropout,
                           multi_label=config.multi_label)
    for layer in new.layers:
        if layer.name != "predictions" and layer.weights:
            layer.set_weights(old.get_layer(layer.name).get_weights())
    freeze_backbone(new)
    return new


def _report_skipped(s, found) -> None:
    """Say what the caching pass left out, and record it in the run folder."""
    data = s.data
    for note in data.warnings[len(found.warnings):]:
        s.say(f"[yellow]warning:[/] {note}")
    if data.skipped:
        # found.skipped: a label file's bad rows, left out before any decoding
        s.say(f"[yellow]skipped {skipped_count(len(data.skipped), len(found.skipped))}[/]; see skipped.csv")
    if s.chief and data.skipped:
        write_csv(s.run / "skipped.csv", ["path", "reason"], data.skipped)
    if s.chief and data.class_names != found.class_names:
        saved = json.loads((s.run / "config.json").read_text(encoding="utf-8"))
        write_json(s.run / "config.json", {**saved, "class_names": data.class_names})
        write_text(s.run / "labels.txt", "\n".join(data.class_names) + "\n")


def validation_data(cache: ActivationCache, n_classes: int, batch_size: int):
    """Phase 2's validation set: the cached val activations as arrays, or, once they spilled to a
    file, as batches read from it (a whole spilled set would not fit the budget)."""
    if not isinstance(cache.val, DiskArray):
        return (cache.val, targets(cache.val_labels, n_classes))
    return CachedRows(cache.val, targets(cache.val_labels, n_classes), batch_size)


class CachedRows(keras.utils.PyDataset):
    """(rows, labels) batches of a spilled array, in order."""

    def __init__(self, rows: DiskArray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self.rows, self.labels, self.batch_size = rows, labels, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.rows[part], self.labels[part]


class RandomViews(keras.utils.PyDataset):
    """Phase 2 batches from the cache: each epoch sees every image once, in a random cached view."""

    def __init__(self, cache: ActivationCache, n_classes: int, batch_size: int, seed: int,
                 class_weights: dict[int, float] | None = None):
        super().__init__()
        self.cache, self.n_classes, self.batch_size = cache, n_classes, batch_size
        self.weights = None if class_weights is None else np.asarray([class_weights[i] for i in range(n_classes)], np.float32)
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(self.cache.train.shape[1] / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        order = np.argsort(rows)  # sorted reads are kinder to a file-backed cache
        rows, views = rows[order], self.view[rows[order]]
        x = np.asarray(self.cache.train[views, rows])
        labels = self.cache.train_labels[rows]
        y = targets(labels, self.n_classes)
        return (x, y) if self.weights is None else (x, y, self.weights[labels])

    def on_epoch_end(self) -> None:
        n = self.cache.train.shape[1]
        self.order = self.rng.permutation(n)
        self.view = self.rng.integers(self.cache.views, size=n)
