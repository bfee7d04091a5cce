"""tlcli.finalize: the end of a multi-label run (the saved model's check, thresholds.json and the
figures at the tuned thresholds) on hand-made probabilities; single-label runs are checked end
to end in test_train.py."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

# 4 validation images x 2 labels. Tuned by hand (see test_multilabel): a -> 0.6, b -> 0.05
# (every image predicted). At those thresholds: a right on every image (F1 1); b 2 TP, 2 FP
# (F1 4/6); exact match on images 1 and 3 of 4. AP: a 1; b ranked 0.7- 0.6+ 0.2- 0.1+ -> 1/2.
PROBS = np.array([[0.9, 0.2], [0.8, 0.6], [0.4, 0.7], [0.1, 0.1]], np.float32)
TRUTH = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], np.float32)
POS_WEIGHTS = {"a": 2.0, "b": 1.0}


def hand_loss() -> float:
    """The weighted binary cross-entropy by hand: -(w y log p + (1 - y) log(1 - p)), averaged."""
    w = np.array(list(POS_WEIGHTS.values()))
    return float(-np.mean(w * TRUTH * np.log(PROBS) + (1 - TRUTH) * np.log(1 - PROBS)))


def keras_pr_auc() -> float:
    """What Keras's own PR-AUC metric (not tlcli's code) says of the probabilities."""
    import keras

    metric = keras.metrics.AUC(curve="PR", multi_label=True, num_labels=2)
    metric.update_state(TRUTH, PROBS)
    return float(metric.result())


def finish(tmp_path, recorded: dict, calibrate: bool = True) -> tuple[dict, list[str]]:
    from tlcli.config import TrainConfig
    from tlcli.finalize import TrainResult, _complete_multilabel

    run = tmp_path / "runs" / "train"
    run.mkdir(parents=True)
    said = []
    result = TrainResult(run, {**recorded, "pos_weights": POS_WEIGHTS})
    config = TrainConfig("labels.csv", multi_label=True, calibrate=calibrate)
    _complete_multilabel(result, SimpleNamespace(class_names=["a", "b"]), config, said.append, PROBS, TRUTH)
    return json.loads((run / "metrics.json").read_text()), said


def test_a_multi_label_run_ends_with_tuned_thresholds_and_their_figures(tmp_path):
    metrics, said = finish(tmp_path, {"val_pr_auc": keras_pr_auc(), "val_loss": hand_loss()})
    run = tmp_path / "runs" / "train"
    assert json.loads((run / "thresholds.json").read_text()) == {
        "labels": ["a", "b"], "thresholds": [pytest.approx(0.6), pytest.approx(0.05)], "tuned_on": "val", "metric": "f1"}
    assert metrics["val_macro_f1"] == pytest.approx((1 + 4 / 6) / 2)
    assert metrics["val_exact_match"] == metrics["val_accuracy"] == pytest.approx(0.5)
    assert metrics["val_map"] == pytest.approx(0.75)
    assert metrics["saved_model_check"]["agrees"] is True
    assert metrics["saved_model_check"]["val_loss"] == pytest.approx(hand_loss(), abs=1e-5)
    assert "temperature" not in metrics["calibration"] and "thresholds.json" in metrics["calibration"]["skipped"]
    assert (run / ".complete").exists() and not any("warning" in line for line in said)


def test_a_multi_label_saved_model_that_disagrees_with_training_is_reported(tmp_path):
    metrics, said = finish(tmp_path, {"val_pr_auc": keras_pr_auc() - 0.1, "val_loss": hand_loss()},
                           calibrate=False)
    assert metrics["saved_model_check"]["agrees"] is False
    assert metrics["saved_model_check"]["val_pr_auc"] == pytest.approx(keras_pr_auc(), abs=1e-5)
    assert any("warning" in line and "mAP" in line for line in said)
    assert "calibration" not in metrics  # --no-calibrate: nothing to skip
    metrics, _ = finish(tmp_path / "loss", {"val_pr_auc": keras_pr_auc(), "val_loss": hand_loss() * 1.1})
    assert metrics["saved_model_check"]["agrees"] is False
