"""tlcli train vs the hand-written Keras transfer-learning recipe, same data, one process.

The recipe is the keras.io transfer-learning guide as a user would write it:
image_dataset_from_directory at 224 px, batch 32, RandomFlip + RandomRotation(0.1), a frozen
MobileNetV2 + global average pooling + dropout 0.2 + dense for 5 epochs at Adam 1e-3, then the
layers from index 100 on unfrozen at Adam 1e-5 for 5 more, BatchNorm in inference mode.
tlcli runs with its defaults (or --set preset=fast) on the same backbone. Both train and validate on the
same images: a folder with train/ and val/ as it is; otherwise the recipe's own 20% split
(image_dataset_from_directory's), handed to tlcli as a label file with a split column. Each seed
runs both, back to back; the table gives the mean and the spread (min to max) over the seeds.

    KERAS_HOME=../shared/keras_home python benchmarks/vs_recipe.py ../shared/data/flowers-dev
    KERAS_HOME=../shared/keras_home python benchmarks/vs_recipe.py ../shared/data/flowers-train --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def recipe_datasets(data_dir: Path, seed: int, size=(224, 224), batch: int = 32):
    """The recipe's training and validation datasets, as the keras.io guide makes them."""
    import keras

    train_dir, val_dir = data_dir / "train", data_dir / "val"
    if train_dir.is_dir() and val_dir.is_dir():
        train_ds = keras.utils.image_dataset_from_directory(train_dir, image_size=size, batch_size=batch, seed=seed)
        val_ds = keras.utils.image_dataset_from_directory(val_dir, image_size=size, batch_size=batch, shuffle=False)
    else:
        common = dict(validation_split=0.2, seed=seed, image_size=size, batch_size=batch)
        train_ds = keras.utils.image_dataset_from_directory(data_dir, subset="training", **common)
        val_ds = keras.utils.image_dataset_from_directory(data_dir, subset="validation", **common)
    return train_ds, val_ds


def shared_split(data_dir: Path, seed: int, folder: Path) -> Path:
    """`data_dir` as tlcli should read it to see the recipe's images: the folder itself when it
    has train/ and val/, else a label file (path,label,split) of the recipe's split."""
    if (data_dir / "train").is_dir() and (data_dir / "val").is_dir():
        return data_dir
    import csv

    train_ds, val_ds = recipe_datasets(data_dir, seed)
    label_file = folder / "split.csv"
    with open(label_file, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label", "split"])
        for split, ds in (("train", train_ds), ("val", val_ds)):
            for path in ds.file_paths:
                out.writerow([path, Path(path).parent.name, split])
    return label_file


def run_recipe(data_dir: Path, backbone: str, seed: int, _settings: dict) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    size = (224, 224)
    train_ds, val_ds = recipe_datasets(data_dir, seed, size)
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


def run_tlcli(data_dir: Path, backbone: str, seed: int, settings: dict) -> dict:
    from tlcli.config import TrainConfig
    from tlcli.train import train

    with tempfile.TemporaryDirectory() as project:
        data = shared_split(data_dir, seed, Path(project))
        settings = dict(settings)
        preset = settings.pop("preset", "default")
        config = TrainConfig(str(data), backbone=backbone, seed=seed, project=project, **settings)
        config = config.with_preset(preset, keep=settings)
        result = train(config, quiet=True)
    seconds = result.metrics["seconds"]
    return {"phase1": seconds["phase1"], "phase2": seconds.get("phase2", 0.0),
            "val_accuracy": result.metrics["val_accuracy"]}


def cpu_seconds() -> float:
    """This process's CPU time (user + system): steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_settings(pairs: list[str]) -> dict:
    """--set name=value pairs as TrainConfig keyword arguments (values read as JSON, else text)."""
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    return settings


def spread(values: list[float], digits: int = 1, scale: float = 1.0) -> str:
    """Mean, and min to max when there is more than one value."""
    values = [v * scale for v in values]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--backbone", default="mobilenet_v2", help="tlcli registry name (the recipe uses the Keras class)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each running both")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a tlcli TrainConfig setting, e.g. --set preset=fast (repeatable)")
    args = parser.parse_args()
    keras_class = {"mobilenet_v2": "MobileNetV2"}.get(args.backbone)
    if keras_class is None:
        parser.error("the recipe is written for mobilenet_v2")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    settings = parse_settings(args.set)

    import tensorflow  # noqa: F401  (imported before timing, for both)
    from rich.console import Console
    from rich.table import Table

    results = {"recipe": [], "tlcli": []}
    for seed in seeds:
        for name, runner, backbone in (("recipe", run_recipe, keras_class), ("tlcli", run_tlcli, args.backbone)):
            with PeakMemory() as memory:
                start, cpu = time.perf_counter(), cpu_seconds()
                figures = runner(args.data_dir, backbone, seed, settings)
                figures["wall"] = time.perf_counter() - start  # everything: loading, building, both phases
                figures["cpu"] = cpu_seconds() - cpu
            figures["peak_mb"] = memory.peak_mb
            results[name].append(figures)
            print(json.dumps({"seed": seed, "who": name, **{k: round(v, 4) for k, v in figures.items()}}), flush=True)

    extra = " ".join(args.set)
    table = Table(title=f"tlcli vs hand-written Keras recipe: {args.data_dir} ({args.backbone}, {os.cpu_count()} CPUs, "
                        f"seeds {args.seeds}{', ' + extra if extra else ''}); mean (min–max)")
    for column in ("", "phase 1 s", "phase 2 s", "total wall s", "CPU s", "peak RSS MB", "val accuracy %"):
        table.add_column(column, justify="right")
    for name in ("recipe", "tlcli"):
        runs = results[name]
        table.add_row(name, *(spread([r[key] for r in runs]) for key in ("phase1", "phase2", "wall", "cpu")),
                      spread([r["peak_mb"] for r in runs], 0), spread([r["val_accuracy"] for r in runs], 1, 100))
    pairs = list(zip(results["tlcli"], results["recipe"]))
    table.add_row("tlcli / recipe", *(spread([t[key] / r[key] for t, r in pairs], 2) for key in ("phase1", "phase2", "wall", "cpu")),
                  spread([t["peak_mb"] / r["peak_mb"] for t, r in pairs], 2),
                  spread([(t["val_accuracy"] - r["val_accuracy"]) * 100 for t, r in pairs], 1) + " pts")
    Console().print(table)
    print("Peak RSS is the process's highest resident memory while each ran (tlcli runs second, in the same process).")


if __name__ == "__main__":
    main()
