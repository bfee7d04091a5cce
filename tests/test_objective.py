"""tlcli.objective: the loss and metrics of each kind of head, against values computed by hand."""

import numpy as np
import pytest

from tlcli.config import TrainConfig

TRUTH = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
PROBS = np.array([[0.8, 0.4, 0.9], [0.3, 0.1, 0.6]], np.float32)


def test_multi_label_loss_weighs_each_labels_positives_and_does_not_smooth():
    from tlcli.objective import loss

    # Image 0: -(2 log 0.8 + log 0.6 + 0.5 log 0.9) / 3; image 1: -(log 0.7 + log 0.9 + 0.5 log 0.6) / 3.
    by_hand = -np.mean([(2 * np.log(0.8) + np.log(0.6) + 0.5 * np.log(0.9)) / 3,
                        (np.log(0.7) + np.log(0.9) + 0.5 * np.log(0.6)) / 3])
    config = TrainConfig("labels.csv", multi_label=True, label_smoothing=0.1)  # smoothing: single-label only
    assert float(loss(config, np.array([2.0, 1.0, 0.5]))(TRUTH, PROBS)) == pytest.approx(by_hand, rel=1e-5)
    plain = -np.mean(TRUTH * np.log(PROBS) + (1 - TRUTH) * np.log(1 - PROBS))
    assert float(loss(config)(TRUTH, PROBS)) == pytest.approx(plain, rel=1e-5)


def test_single_label_loss_is_smoothed_categorical_cross_entropy():
    from tlcli.objective import loss

    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    # Smoothing 0.3 over 3 classes: targets 0.8, 0.1, 0.1.
    by_hand = -(0.8 * np.log(0.7) + 0.1 * np.log(0.2) + 0.1 * np.log(0.1))
    config = TrainConfig("data", label_smoothing=0.3)
    assert float(loss(config)(np.array([[1, 0, 0]], np.float32), probs)) == pytest.approx(by_hand, rel=1e-5)


def test_multi_label_scores_add_map_to_the_loss():
    from tlcli.objective import metrics, scores

    assert scores(TrainConfig("data"), np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)).keys() == {"loss"}
    config = TrainConfig("labels.csv", multi_label=True)
    # Labels 0 and 2 ranked perfectly (AP 1); label 1 has no positive and counts 0 in Keras's mean.
    found = scores(config, TRUTH, PROBS)
    assert found["map"] == pytest.approx(2 / 3, abs=0.01)
    assert [m.name for m in metrics(config, 3)] == ["accuracy", "map"]
