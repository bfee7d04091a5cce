"""tlcli.multilabel: thresholds tuned per label, and the multi-label figures, against hand-computed values."""

import numpy as np
import pytest


# ---------------------------------------------------------------- metrics (hand-computed figures)

from tlcli.multilabel import (average_precision, confusion_counts, exact_match, macro_f1,  # noqa: E402
                              mean_average_precision, micro_f1, multilabel_metrics, precision_recall_f1,
                              predicted_sets)

# 4 images x 3 labels. Label c is never present and predicted once: a pure false positive.
TRUTH = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
PROBS = np.array([[0.9, 0.65, 0.1], [0.6, 0.7, 0.3], [0.4, 0.55, 0.8], [0.2, 0.1, 0.0]])
THRESHOLDS = [0.5, 0.6, 0.8]  # 0.8 at exactly 0.8: a label is present at its threshold


def test_predicted_sets_include_a_probability_equal_to_the_threshold():
    assert predicted_sets(PROBS, THRESHOLDS).astype(int).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_confusion_counts_per_label_by_hand():
    predicted = predicted_sets(PROBS, THRESHOLDS)
    # a: TP 2 (rows 0, 1), TN 2.  b: TP 1 (row 1), FP 1 (row 0), FN 1 (row 2; 0.55 < 0.6), TN 1.
    # c: FP 1 (row 2), TN 3.
    assert confusion_counts(TRUTH, predicted).tolist() == [[2, 0, 0, 2], [1, 1, 1, 1], [0, 1, 0, 3]]


def test_f1_micro_macro_and_exact_match_by_hand():
    counts = confusion_counts(TRUTH, predicted_sets(PROBS, THRESHOLDS))
    precision, recall, f1 = precision_recall_f1(counts)
    assert precision.tolist() == [1.0, 0.5, 0.0]
    assert recall.tolist() == [1.0, 0.5, 0.0]
    assert f1.tolist() == [1.0, 0.5, 0.0]
    assert micro_f1(counts) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # TP 3, FP 2, FN 1 pooled
    assert macro_f1(counts) == pytest.approx((1 + 0.5 + 0) / 3)
    assert exact_match(TRUTH, predicted_sets(PROBS, THRESHOLDS)) == 0.5  # rows 1 and 3 (empty = empty)


def test_macro_f1_leaves_out_a_label_neither_present_nor_predicted():
    counts = np.array([[1, 1, 0, 2], [0, 0, 0, 4]])  # label 2: nothing to say about it
    assert macro_f1(counts) == pytest.approx(2 / 3)


def test_average_precision_of_scikit_learns_documented_example():
    # sklearn.metrics.average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.8333...
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)


def test_average_precision_counts_tied_scores_as_one_step():
    # Ranked: {0.5: one positive, one negative}, then 0.2 positive. Precision 1/2 at recall 1/2,
    # 2/3 at recall 1: AP = 1/2 * 1/2 + 1/2 * 2/3. Taking the tie in file order would give 5/6.
    assert average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.25 + 1 / 3)


def test_mean_average_precision_skips_labels_no_image_has():
    # a: positives ranked 1st and 2nd -> 1.  b: ranked 1st (0.7) and 3rd (0.55), a negative (0.65)
    # between -> precision 1 at recall 1/2, 2/3 at recall 1.
    mean_ap, per_label = mean_average_precision(PROBS, TRUTH)
    assert per_label[0] == pytest.approx(1.0)
    assert per_label[1] == pytest.approx(0.5 + 1 / 3)
    assert per_label[2] is None
    assert mean_ap == pytest.approx((1.0 + 0.5 + 1 / 3) / 2)


def test_multilabel_metrics_gathers_the_figures_per_label():
    m = multilabel_metrics(TRUTH, PROBS, THRESHOLDS, ["a", "b", "c"])
    assert m["per_class"]["b"] == {"threshold": 0.6, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                                   "ap": pytest.approx(0.5 + 1 / 3), "support": 2, "tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert m["per_class"]["c"]["ap"] is None
    assert (m["n_images"], m["exact_match"]) == (4, 0.5)
