"""tlcli train vs the hand-written Keras transfer-learning recipe, same data, one process.

The recipe is the keras.io transfer-learning guide as a user would write it:
image_dataset_from_directory at 224 px, batch 32, RandomFlip + RandomRotation(0.1), a frozen
MobileNetV2 + global average pooling + dropout 0.2 + dense for 5 epochs at Adam 1e-3, then the
layers from index 100 on unfrozen at Adam 1e-5 for 5 more, BatchNorm in inference mode.
tlcli runs with its defaults on the same backbone. Prints one table.

    KERAS_HOME=../shared/keras_home python benchmarks/vs_recipe.py ../shared/data/flowers-dev
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class PeakMemory:
    """Samples this process's resident memory in a thread; `.peak_mb` is the highest seen."""

    def __enter__(self):
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_recipe(data_dir: Path, backbone: str, seed: int) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    size, batch = (224, 224), 32
    train_dir, val_dir = data_dir / "train", data_dir / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train_ds = keras.utils.image_dataset_from_directory(train_dir, image_size=size, batch_size=batch, seed=seed)
        val_ds = keras.utils.image_dataset_from_directory(val_dir, image_size=size, batch_size=batch, shuffle=False)
    else:
        common = dict(validation_split=0.2, seed=seed, image_size=size, batch_size=batch)
        train_ds = keras.utils.image_dataset_from_directory(data_dir, subset="training", **common)
        val_ds = keras.utils.image_dataset_from_directory(data_dir, subset="validation", **common)
    n_classes = len(train_ds.class_names)
    train_ds, val_ds = train_ds.prefetch(tf.data.AUTOTUNE), val_ds.prefetch(tf.data.AUTOTUNE)

    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    base = getattr(keras.applications, backbone)(input_shape=size + (3,), include_top=False, weights="imagenet")
    base.trainable = False
    inputs = keras.Input(size + (3,))
    x = augment(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)  # mobilenet_v2.preprocess_input
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train_ds, epochs=5, validation_data=val_ds, verbose=0)
    phase1 = time.perf_counter() - start

    base.trainable = True
    for layer in base.layers[:100]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train_ds, epochs=10, initial_epoch=5, validation_data=val_ds, verbose=0)
    phase2 = time.perf_counter() - start
    _, accuracy = model.evaluate(val_ds, verbose=0)
    return {"phase1": phase1, "phase2": phase2, "val_accuracy": accuracy}


def run_tlcli(data_dir: Path, backbone: str, seed: int) -> dict:
    from tlcli.config import TrainConfig
    from tlcli.train import train

    with tempfile.TemporaryDirectory() as project:
        result = train(TrainConfig(str(data_dir), backbone=backbone, seed=seed, project=project), quiet=True)
    seconds = result.metrics["seconds"]
    return {"phase1": seconds["phase1"], "phase2": seconds.get("phase2", 0.0),
            "val_accuracy": result.metrics["val_accuracy"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--backbone", default="mobilenet_v2", help="tlcli registry name (the recipe uses the Keras class)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras_class = {"mobilenet_v2": "MobileNetV2"}.get(args.backbone)
    if keras_class is None:
        parser.error("the recipe is written for mobilenet_v2")

    import tensorflow  # noqa: F401  (imported before timing, for both)
    from rich.console import Console
    from rich.table import Table

    results = {}
    for name, runner, backbone in (("recipe", run_recipe, keras_class), ("tlcli", run_tlcli, args.backbone)):
        with PeakMemory() as memory:
            start = time.perf_counter()
            figures = runner(args.data_dir, backbone, args.seed)
            figures["wall"] = time.perf_counter() - start  # everything: loading, building, both phases
        figures["peak_mb"] = memory.peak_mb
        results[name] = figures

    table = Table(title=f"tlcli vs hand-written Keras recipe: {args.data_dir} ({args.backbone}, {os.cpu_count()} CPUs)")
    for column in ("", "phase 1 s", "phase 2 s", "total wall s", "peak RSS MB", "val accuracy"):
        table.add_column(column, justify="right")
    for name in ("recipe", "tlcli"):
        r = results[name]
        table.add_row(name, f"{r['phase1']:.1f}", f"{r['phase2']:.1f}", f"{r['wall']:.1f}", f"{r['peak_mb']:.0f}",
                      f"{r['val_accuracy']:.3f}")
    t, r = results["tlcli"], results["recipe"]
    table.add_row("tlcli / recipe", f"{t['phase1'] / r['phase1']:.2f}", f"{t['phase2'] / r['phase2']:.2f}",
                  f"{t['wall'] / r['wall']:.2f}", f"{t['peak_mb'] / r['peak_mb']:.2f}",
                  f"{(t['val_accuracy'] - r['val_accuracy']) * 100:+.1f} pts")
    Console().print(table)
    print("Peak RSS is the process's highest resident memory while each ran (tlcli runs second, in the same process).")


if __name__ == "__main__":
    main()
