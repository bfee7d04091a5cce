"""The TensorBoard event files of `train --tensorboard`, read back with TensorFlow's own reader
(tests/test_train.py checks them after a real run)."""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import read_events
from tlcli.config import AugmentConfig
from tlcli.data import Split
from tlcli.images import load_image
from tlcli.tensorboard import EventLog, _one_per_class


def _row(epoch, phase, loss, lr):
    return {"epoch": epoch, "phase": phase, "loss": loss, "accuracy": 0.25 * epoch, "val_loss": loss + 1,
            "val_accuracy": 0.2 * epoch, "lr": lr, "seconds": 0.1, "stopped_early": 0}


def test_each_epoch_is_a_step_of_keras_named_scalars_in_train_and_validation(tmp_path):
    rows = [_row(1, 1, 2.0, 1e-3), _row(2, 1, 1.5, 1e-3), _row(3, 2, 1.0, 1e-4)]
    with EventLog(tmp_path) as log:
        for row in rows:
            log.epoch(row)
    train = read_events(tmp_path / "tensorboard" / "train")
    validation = read_events(tmp_path / "tensorboard" / "validation")
    assert train["epoch_loss"] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert train["epoch_accuracy"] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert train["epoch_learning_rate"] == [(1, pytest.approx(1e-3)), (2, pytest.approx(1e-3)), (3, pytest.approx(1e-4))]
    assert validation["epoch_loss"] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert validation["epoch_accuracy"] == [(1, pytest.approx(0.2)), (2, pytest.approx(0.4)), (3, pytest.approx(0.6))]
    assert "epoch_learning_rate" not in validation
    assert {train[f"plugin:epoch_{k}"] for k in ("loss", "accuracy", "learning_rate")} == {"scalars"}


def _png_size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_the_confusion_matrix_is_the_plotted_png_at_the_given_step(tmp_path):
    with EventLog(tmp_path) as log:
        log.confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"], step=7)
    events = read_events(tmp_path / "tensorboard" / "validation")
    [(step, (width, height, png))] = events["confusion_matrix"]
    assert step == 7 and events["plugin:confusion_matrix"] == "images"
    assert png[:4] == b"\x89PNG" and _png_size(png) == (width, height) and width > height > 100


def test_augmented_images_show_one_image_a_class_beside_three_augmented_versions(tmp_path, image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*_[01].*"))  # 2 of each of the 3 classes
    split = Split(paths, np.array([i // 2 for i in range(len(paths))], np.int32))
    with EventLog(tmp_path) as log:
        log.augmented_images(split, AugmentConfig(), size=24, seed=0)
    [(step, (width, height, png))] = read_events(tmp_path / "tensorboard" / "train")["augmented_images"]
    assert step == 0 and (width, height) == (4 * 24, 4 * 24)  # 4 images: every class, then the first again
    picture = np.asarray(Image.open(io.BytesIO(png)))
    cell = lambda row, column: picture[24 * row:24 * (row + 1), 24 * column:24 * (column + 1)]  # noqa: E731
    for row, path in enumerate([paths[0], paths[2], paths[4], paths[1]]):  # bright_0, dark_0, striped_0, bright_1
        assert np.array_equal(cell(row, 0), load_image(path, 24))
    assert not any(np.array_equal(cell(0, 0), cell(0, column)) for column in (1, 2, 3))  # augmented, not copies
    with EventLog(tmp_path / "off") as log:
        log.augmented_images(split, AugmentConfig(enabled=False), size=24, seed=0)
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_one_per_class_takes_the_classes_in_turn():
    split = Split(["a0", "a1", "a2", "b0", "c0", "c1"], np.array([0, 0, 0, 1, 2, 2]))
    assert _one_per_class(split, 5) == ["a0", "b0", "c0", "a1", "c1"]
    assert _one_per_class(split, 10) == ["a0", "b0", "c0", "a1", "c1", "a2"]
