"""Temperature scaling and calibration measures, on toy models whose answers are known by hand."""

import json

import numpy as np
import pytest

from conftest import make_folder
from tlcli.calibration import (brier, confidence_verdict, expected_calibration_error, fit_temperature,
                               fold_temperature, nll, with_temperature)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _toy(scale: float, seed: int = 0, n: int = 2000):
    """Logits that are right about 70% of the time, multiplied by `scale` (large: overconfident)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    z = rng.normal(0, 1, (n, 4))
    z[np.arange(n), labels] += 1.2
    return _softmax(scale * z), labels


def test_fitting_the_temperature_repairs_an_overconfident_model():
    probabilities, labels = _toy(scale=6.0)
    assert confidence_verdict(probabilities, labels) == "over-confident"
    t = fit_temperature(probabilities, labels)
    calibrated = with_temperature(probabilities, t)
    assert 4.0 < t < 8.0  # the toy's own scale is 6
    assert nll(calibrated, labels) < 0.8 * nll(probabilities, labels)
    assert expected_calibration_error(calibrated, labels) < 0.03 < expected_calibration_error(probabilities, labels)
    assert (calibrated.argmax(1) == probabilities.argmax(1)).all()  # a temperature never changes the answer


def test_an_underconfident_model_gets_a_temperature_below_one():
    probabilities, labels = _toy(scale=0.4)
    assert confidence_verdict(probabilities, labels) == "under-confident"
    assert fit_temperature(probabilities, labels) < 1.0


def test_ece_and_brier_by_hand():
    # Two bins: 0.9-confident and right 1 of 2 times (gap 0.4); 0.6-confident and right 2 of 2 (gap 0.4).
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(p, labels) == pytest.approx(0.4)
    assert brier(p, labels) == pytest.approx((0.02 + 1.62 + 0.32 + 0.32) / 4)
    assert expected_calibration_error(np.array([[0.75, 0.25]] * 4), np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_folding_the_temperature_into_the_model_divides_its_logits():
    from tlcli.model import build_classifier

    model = build_classifier("tiny", 3, 16, "none")
    dense = model.get_layer("predictions")
    dense.set_weights([dense.get_weights()[0], np.array([0.5, -1.0, 2.0], np.float32)])  # a bias that matters
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3)).astype("float32")
    before = model.predict(images, verbose=0)
    fold_temperature(model, 2.5)
    assert np.allclose(model.predict(images, verbose=0), with_temperature(before, 2.5), atol=1e-5)


@pytest.mark.slow
def test_a_run_saves_and_exports_calibrated_probabilities(tmp_path, cli):
    """The temperature is in model.keras itself (its val NLL is the 'after' figure) and in the
    exported TFLite file, whose probabilities equal the calibrated Keras ones."""
    from tlcli import runtime
    from tlcli.config import TrainConfig
    from tlcli.data import load_folder
    from tlcli.rundir import resolve_model
    from tlcli.train import train

    data = make_folder(tmp_path / "data", per_class=12, size=24)
    config = TrainConfig(str(data), backbone="tiny", weights="none", image_size=24, epochs=2, cache_views=1,
                         fine_tune_epochs=1, batch_size=8, val_split=0.6, project=str(tmp_path / "runs"))
    run = train(config, quiet=True).run_dir
    calibration = json.loads((run / "metrics.json").read_text())["calibration"]
    assert calibration["temperature"] != 1.0
    val = load_folder(str(data), 24, 0.6, 0).val
    keras_probs = runtime.run_batches(runtime.open_model(resolve_model(str(run))), val.images)
    assert nll(keras_probs, val.labels) == pytest.approx(calibration["after"]["nll"], abs=1e-4)
    assert calibration["after"]["nll"] <= calibration["before"]["nll"]
    assert cli(["export", "--model", run, "--tflite", "-q"]).exit_code == 0
    tflite = runtime.run_batches(runtime.open_model(resolve_model(str(run / "export" / "model.tflite"))), val.images)
    assert np.allclose(tflite, keras_probs, atol=1e-5)


def test_a_validation_set_without_mistakes_is_not_calibrated(tmp_path):
    """Nothing to weigh: the fit would sharpen every answer to its bound, so the model is left as is."""
    from tlcli.finalize import _calibrate

    probabilities = np.tile([[0.9, 0.05, 0.05]], (30, 1))
    result = _calibrate(None, tmp_path / "model.keras", probabilities, np.zeros(30, int))
    assert "skipped" in result and not (tmp_path / "model.keras").exists()
