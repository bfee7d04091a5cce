"""Shared fixtures: a tiny seeded image folder and one trained run reused by predict/evaluate/export tests."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FLOWERS = SHARED / "data" / "flowers-dev"
KERAS_HOME = SHARED / "keras_home"
CLASSES = ("bright", "dark", "striped")


def make_image(kind: str, size: int, rng: random.Random) -> Image.Image:
    """An image whose class is easy to learn from pixels: bright, dark, or striped."""
    noise = np.asarray([rng.randint(0, 40) for _ in range(size * size * 3)], np.int16).reshape(size, size, 3)
    if kind == "bright":
        base = np.full((size, size, 3), 200, np.int16)
    elif kind == "dark":
        base = np.full((size, size, 3), 30, np.int16)
    else:
        base = np.zeros((size, size, 3), np.int16)
        base[:, ::8] = 230
        base[:, 1::8] = 230
        base[:, 2::8] = 230
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_folder(root: Path, per_class: int = 8, size: int = 40, seed: int = 0, classes=CLASSES) -> Path:
    """A class-folder dataset of small PNG/JPEG images, the same bytes for the same seed."""
    rng = random.Random(seed)
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".png" if i % 2 else ".jpg"
            make_image(kind, size, rng).save(folder / f"{kind}_{i}{suffix}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """3 classes x 8 images of 40 px, class folders layout. Treat as read-only."""
    return make_folder(tmp_path_factory.mktemp("images") / "data")


@pytest.fixture(scope="session")
def trained_run(image_folder, tmp_path_factory) -> Path:
    """One complete run of the tiny backbone on `image_folder`, shared by predict/evaluate/export tests."""
    from tlcli.config import TrainConfig
    from tlcli.train import train

    project = tmp_path_factory.mktemp("runs")
    config = TrainConfig(str(image_folder), backbone="tiny", weights="none", image_size=32, epochs=2,
                         cache_views=2, fine_tune_epochs=1, batch_size=8, project=str(project))
    return train(config, quiet=True).run_dir


def saved_model_figures(run: Path) -> tuple[float, float]:
    """(accuracy, plain cross-entropy) of run/model.keras on the run's validation images, computed
    here with numpy, independently of tlcli's training code."""
    import json

    from tlcli.config import TrainConfig
    from tlcli.data import load_folder
    from tlcli.model import load_classifier

    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    folder = load_folder(config.data_dir, config.image_size, config.val_split, config.seed)
    probabilities = load_classifier(run / "model.keras").predict(folder.val.images.astype("float32"), verbose=0)
    labels = folder.val.labels
    accuracy = float((probabilities.argmax(1) == labels).mean())
    cross_entropy = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1)).mean())
    return accuracy, cross_entropy


@pytest.fixture
def cli():
    """Invoke the tlcli app in-process: cli(["train", ...]) -> click Result."""
    from tlcli.cli import app

    runner = CliRunner()

    def invoke(args, **kwargs):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


def use_keras_home(monkeypatch, path) -> None:
    """Point Keras's weight cache at `path`: Keras reads KERAS_HOME only when first imported."""
    import keras.src.backend.config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(path))


requires_flowers = pytest.mark.skipif(
    not (FLOWERS.is_dir() and KERAS_HOME.is_dir()), reason="../shared (flowers-dev, keras_home) is not here"
)


def read_events(folder: Path) -> dict:
    """{tag: [(step, value), ...]} of every event file in `folder`, in the order written, read with
    TensorFlow's own reader: a scalar as a float, an image as (width, height, PNG bytes), and the
    TensorBoard plugin each summary is for under "plugin:<tag>"."""
    import tensorflow as tf

    found: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                item = float(array) if array.ndim == 0 else (int(array[0]), int(array[1]), bytes(array[2]))
                found.setdefault(value.tag, []).append((event.step, item))
                if value.metadata.plugin_data.plugin_name:
                    found[f"plugin:{value.tag}"] = value.metadata.plugin_data.plugin_name
    return found
