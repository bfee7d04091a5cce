"""Export's parity check: its figures on a case known by hand, and a broken file caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tlcli.rundir import ModelRef

LABELS = ["bright", "dark"]


def brightness_model():
    """Class 0 ("bright") when the mean pixel is above 128, else class 1, with probabilities of 1.0
    to float32 precision for uniform images of 200 and 30: every figure below is known by hand."""
    import keras

    inputs = keras.Input((8, 8, 3), batch_size=1)
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    # logit 0 - logit 1 = 0.2 * (r + g + b - 384): +81.6 at 200, -20.4 at 30.
    dense.set_weights([np.array([[0.1, -0.1]] * 3, np.float32), np.array([-19.2, 19.2], np.float32)])
    return model


def hand_built_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, class indices with one wrong: accuracy 9/10, "Keras" probabilities that disagree
    with the model on two images: agreement 8/10)."""
    images = np.concatenate([np.full((6, 8, 8, 3), 200, np.uint8), np.full((4, 8, 8, 3), 30, np.uint8)])
    truth = np.array([0] * 6 + [1] * 4)
    reference = np.eye(2, dtype=np.float32)[truth]
    reference[[8, 9]] = reference[[8, 9], ::-1]
    labels = truth.copy()
    labels[0] = 1
    return images, labels, reference


def _runner(kind: str, path: Path, size: int = 8, labels=LABELS):
    from tlcli.runtime import open_model

    return open_model(ModelRef(kind, path, list(labels), size, None))


@pytest.mark.parametrize(("name", "int8_io"), [("float32", False), ("int8", False), ("int8", True)])
def test_check_figures_on_a_hand_built_case(tmp_path, name, int8_io):
    from tlcli.convert import convert_tflite
    from tlcli.parity import check_artifact

    images, labels, reference = hand_built_case()
    path = tmp_path / f"{name}{'_io' if int8_io else ''}.tflite"
    path.write_bytes(convert_tflite(brightness_model(), name, images, int8_io=int8_io)[0])
    runner = _runner("tflite", path)
    if int8_io:
        assert runner.interpreter.get_input_details()[0]["dtype"] == np.uint8

    check = check_artifact(runner, name, reference, images, labels, min_agreement=0.85)
    assert (check.format, check.file, check.path) == (name, path.name, str(path))
    assert (check.agreement, check.accuracy, check.passed) == (0.8, 0.9, False)
    assert check.max_prob_diff == pytest.approx(1.0, abs=0.01)  # the two flipped rows
    assert check.size_bytes == path.stat().st_size and check.latency_ms > 0
    assert check_artifact(runner, name, reference, images, labels, min_agreement=0.8).passed is True


def test_reference_row_on_the_hand_built_case(tmp_path):
    from tlcli.parity import check_reference

    images, labels, _ = hand_built_case()
    path = tmp_path / "model.keras"
    brightness_model().save(path)
    probs, row = check_reference(_runner("keras", path), images, labels)
    np.testing.assert_allclose(probs, np.eye(2)[[0] * 6 + [1] * 4], atol=1e-6)
    assert (row.format, row.file, row.accuracy, row.agreement) == ("keras", "model.keras", 0.9, None)
    assert row.size_bytes == path.stat().st_size and row.latency_ms > 0


# ---------------------------------------------------------------- a broken file is caught


def validation_images(run: Path):
    """The run's validation split (images and class indices), made again as training made it."""
    from tlcli.data import load_folder

    config = json.loads((run / "config.json").read_text())
    return load_folder(config["data_dir"], config["image_size"], config["val_split"], config["seed"]).val


def broken_copy(model):
    """The classifier with its classes rotated: a plausible-looking model that is always wrong."""
    from tlcli.model import load_classifier

    broken = load_classifier(model) if isinstance(model, (str, Path)) else model
    dense = broken.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    return broken


def test_a_broken_artifact_fails_the_check(trained_run, tmp_path):
    from tlcli.convert import convert_tflite, fixed_shape_model
    from tlcli.model import load_classifier
    from tlcli.parity import check_artifact

    keras_model, val_split = load_classifier(trained_run / "model.keras"), validation_images(trained_run)
    labels = (trained_run / "labels.txt").read_text().split()
    broken = broken_copy(trained_run / "model.keras")
    path = tmp_path / "broken.tflite"
    path.write_bytes(convert_tflite(fixed_shape_model(broken, 32), "float32")[0])
    reference = keras_model.predict(val_split.images.astype(np.float32), verbose=0)
    check = check_artifact(_runner("tflite", path, 32, labels), "float32", reference, val_split.images,
                           val_split.labels, 0.98)
    assert check.agreement == 0.0  # rotated classes never agree with the real model
    assert check.passed is False
    good = tmp_path / "good.tflite"
    good.write_bytes(convert_tflite(fixed_shape_model(keras_model, 32), "float32")[0])
    assert check_artifact(_runner("tflite", good, 32, labels), "float32", reference, val_split.images,
                          val_split.labels, 0.98).passed


class _FixedRunner:
    """A multi-label 'model' that answers `probs` for the images it is given, in order."""

    kind, multi_label, thresholds, labels = "tflite", True, [0.5, 0.5], ["a", "b"]

    def __init__(self, path: Path, probs):
        self.path, self.probs = path, np.asarray(probs, np.float32)

    def predict(self, images):
        return self.probs[np.asarray(images)[:, 0, 0, 0]]  # each image holds its own index


def test_a_multi_label_file_agrees_on_an_image_when_its_label_set_is_the_same(tmp_path):
    from tlcli.parity import check_artifact, check_reference

    images = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    (tmp_path / "m.tflite").write_bytes(b"12345")
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    keras_probs = [[0.9, 0.1], [0.9, 0.9], [0.2, 0.8], [0.4, 0.4]]  # {a}, {a, b}, {b}, {}: all right
    exported = [[0.9, 0.1], [0.9, 0.45], [0.2, 0.8], [0.6, 0.4]]  # {a}, {a}, {b}, {a}: the same top label throughout
    reference, row = check_reference(_FixedRunner(tmp_path / "m.tflite", keras_probs), images, truth)
    assert row.accuracy == 1.0
    check = check_artifact(_FixedRunner(tmp_path / "m.tflite", exported), "float32", reference, images, truth, 0.75)
    assert (check.agreement, check.accuracy, check.passed) == (0.5, 0.5, False)
    assert check.max_prob_diff == pytest.approx(0.45)
    # Class indices (a --check-data folder of classes) are label sets of one label.
    assert check_artifact(_FixedRunner(tmp_path / "m.tflite", exported), "float32", reference, images,
                          np.array([0, 1, 1, 0]), 0.75).accuracy == 0.75  # {b} for image 1: wrong
