"""`tlcli train --tensorboard`: TensorBoard event files in <run>/tensorboard/, so that
`tensorboard --logdir runs` compares every run of a project.

    train/       epoch_loss, epoch_accuracy, epoch_learning_rate per epoch; augmented_images at the start
    validation/  epoch_loss, epoch_accuracy per epoch; confusion_matrix of the saved model at the end

The layout and tag names are Keras's TensorBoard callback's, so train and validation curves share
a chart. The step is the run's epoch, counted on across both phases as in history.csv. Only the
chief writes (tlcli.train opens the log on the chief only).

TensorFlow 2.21 leaves tf.summary.scalar and tf.summary.image to the `tensorboard` package, which
tlcli does not install; the summaries are written here with the low-level tf.summary.write and the
metadata those two functions attach, so `tensorboard` is needed only to look at them.

Imported only by the commands that train: importing it imports TensorFlow.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

LOG_DIR = "tensorboard"
AUGMENTED_IMAGES = 4  # training images shown, each beside 3 augmented versions of it


class EventLog:
    """The run's two event writers, opened on first use."""

    def __init__(self, run: Path):
        self.root = Path(run) / LOG_DIR
        self._writers: dict[str, object] = {}

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.root / name))
        return self._writers[name]

    def epoch(self, row: dict) -> None:
        """The scalars of one history.csv row."""
        step = int(row["epoch"])
        for name, values in (("train", {"loss": row["loss"], "accuracy": row["accuracy"], "learning_rate": row["lr"]}),
                             ("validation", {"loss": row["val_loss"], "accuracy": row["val_accuracy"]})):
            with self._writer(name).as_default():
                for key, value in values.items():
                    tf.summary.write(f"epoch_{key}", tf.constant(float(value), tf.float32), step=step,
                                     metadata=_metadata("scalars"))
            self._writer(name).flush()  # so a TensorBoard already watching sees each epoch

    def augmented_images(self, split, augment, size: int, seed: int) -> None:
        """A few training images (one a class, in turn), each beside augmented versions of it, as
        training's augmentation draws them: one picture, at step 0."""
        if not augment.enabled or not len(split):
            return
        from tlcli.augment import preview
        from tlcli.images import load_images

        images, _, _ = load_images(_one_per_class(split, AUGMENTED_IMAGES), size)
        if not len(images):
            return
        grid = preview(images, augment, seed=seed, variants=3)  # (n, 4, h, w, 3) uint8
        n, columns, height, width, _ = grid.shape
        picture = grid.transpose(0, 2, 1, 3, 4).reshape(n * height, columns * width, 3)
        self._image("train", "augmented_images", tf.image.encode_png(picture).numpy(), step=0)

    def confusion_matrix(self, labels, predicted, class_names: list[str], step: int) -> None:
        """The confusion matrix PNG `tlcli evaluate` draws, of the saved model on the validation images."""
        from tlcli.evaluate import confusion_matrix
        from tlcli.plots import plot_confusion_matrix

        matrix = confusion_matrix(labels, predicted, len(class_names))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "confusion_matrix.png"
            plot_confusion_matrix(matrix, class_names, path)
            png = path.read_bytes()
        self._image("validation", "confusion_matrix", png, step=step)

    def _image(self, writer: str, tag: str, png: bytes, step: int) -> None:
        """One PNG, as tf.summary.image stores a batch of one: width, height, then the encoded image."""
        from PIL import Image

        width, height = Image.open(io.BytesIO(png)).size  # reads the header only
        with self._writer(writer).as_default():
            tf.summary.write(tag, tf.constant([str(width).encode(), str(height).encode(), png]), step=step,
                             metadata=_metadata("images"))
        self._writer(writer).flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _metadata(plugin: str):
    """The SummaryMetadata TensorBoard's own scalar ("scalars") or image ("images") summary carries."""
    from tensorflow.core.framework import summary_pb2

    kind = summary_pb2.DATA_CLASS_SCALAR if plugin == "scalars" else summary_pb2.DATA_CLASS_BLOB_SEQUENCE
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin),
                                       data_class=kind)


def _one_per_class(split, count: int) -> list:
    """Up to `count` paths of `split`, taking each class's first image in turn (a multi-label
    image counts under its first label)."""
    by_class: dict[int, list] = {}
    for path, label in zip(split.paths, split.labels):
        by_class.setdefault(int(np.argmax(label)) if np.ndim(label) else int(label), []).append(path)
    queues = [list(paths) for _, paths in sorted(by_class.items())]
    picked = []
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


class EpochEvents(keras.callbacks.Callback):
    """Writes each epoch's history row to the event log. Hung after HistoryRecorder, whose row it reads."""

    def __init__(self, log: EventLog, rows: list):
        super().__init__()
        self.log, self.rows = log, rows

    def on_epoch_end(self, epoch, logs=None):
        self.log.epoch(self.rows[-1])
