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


# ---------------------------------------------------------------- training's side: thresholds, truth, weights

from tlcli.multilabel import UNTUNED_THRESHOLD, multi_hot, positive_weights, rarest_labels, tune_thresholds  # noqa: E402


def test_tune_thresholds_by_hand():
    probs = np.array([[0.9, 0.2, 0.3], [0.8, 0.6, 0.3], [0.4, 0.7, 0.3], [0.1, 0.1, 0.3]])
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    # a: ranked 0.9+ 0.8+ 0.4- 0.1-: the cut after 0.8 gives F1 1, halfway to 0.4 -> 0.6.
    # b: ranked 0.7- 0.6+ 0.2- 0.1+: F1 after each = 0, 2/4, 2/5, 4/6: predict all, half of 0.1 -> 0.05.
    # c: no positive image: nothing to tune, the default.
    assert tune_thresholds(probs, truth).tolist() == pytest.approx([0.6, 0.05, UNTUNED_THRESHOLD])


def test_tune_thresholds_never_cuts_between_equal_scores_and_prefers_the_higher_of_equal_f1s():
    # Ranked 0.9+ 0.5+ 0.5- 0.1-. A cut between the two 0.5s would claim F1 1, but no threshold
    # keeps one 0.5 and drops the other. F1 after 0.9: 2/3; after both 0.5s: 4/5; after 0.1:
    # 4/6. Best: after the 0.5s -> (0.5 + 0.1) / 2.
    probs = np.array([[0.9], [0.5], [0.5], [0.1]])
    truth = np.array([[1], [1], [0], [0]])
    assert tune_thresholds(probs, truth).tolist() == pytest.approx([0.3])
    # Ranked 0.8+ 0.7- 0.6- 0.3+ 0.2- 0.1-. F1 after 0.8: 2/3; after 0.7: 2/4; after 0.6: 2/5;
    # after 0.3: 4/6 = 2/3, equal to the first: the higher threshold, (0.8 + 0.7) / 2, wins.
    probs = np.array([[0.8], [0.7], [0.6], [0.3], [0.2], [0.1]])
    truth = np.array([[1], [0], [0], [1], [0], [0]])
    assert tune_thresholds(probs, truth).tolist() == pytest.approx([0.75])


def test_tune_thresholds_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        tune_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))


def test_multi_hot_in_class_order_leaving_out_unknown_labels():
    hot = multi_hot([("b", "a"), ("c",), ("zzz", "b"), ()], ["a", "b", "c"])
    assert hot.dtype == np.float32
    assert hot.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0]]


def test_rarest_labels_pick_each_images_least_common_label():
    # Counts: a 3, b 2, c 1. Image 0 (a, b) -> b; image 1 (a, c) -> c; image 2 (a) -> a;
    # image 3 (a, b) -> b; image 4 (none) -> -1.
    truth = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    truth[3, 0] = 0
    assert rarest_labels(truth) == [1, 2, 0, 1, -1]


def test_positive_weights_are_negatives_over_positives_within_the_limit():
    # 10 images. a: 2 positives -> 8/2 = 4. b: 5 -> 1. c: 9 -> 1/9, raised to 1/5.
    # d: 0 positives -> 1. e: 0.5 of 10 -> one positive: 9, lowered to the limit 5.
    truth = np.zeros((10, 5))
    truth[:2, 0] = truth[:5, 1] = truth[:9, 2] = truth[:1, 4] = 1
    assert positive_weights(truth, limit=5).tolist() == pytest.approx([4, 1, 0.2, 1, 5])
