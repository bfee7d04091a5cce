"""Multi-label figures from probabilities and multi-hot truth, in NumPy alone.

`probs` and `truth` are (N, C): one independent probability per image and label, and 1 where
the image has the label. Training builds the truth (`multi_hot`), splits by each image's
rarest label, weighs each label's positives (`positive_weights`) and tunes one threshold per
label on the validation images (`tune_thresholds`); predict, evaluate and export then apply
them, and score with the metrics.
No TensorFlow here: `tlcli predict` on a .tflite imports this module.
"""

from __future__ import annotations

import numpy as np

UNTUNED_THRESHOLD = 0.5  # a label with no positive validation image: nothing to tune on


def tune_thresholds(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """One threshold per label, the one that maximises that label's F1 on (`probs`, `truth`).

    A label is predicted when its probability is >= its threshold. For each label the images
    are ranked by probability and every cut between two distinct probabilities is tried; the
    best cut's threshold lies halfway between the probabilities either side of it (half the
    lowest one when every image is predicted), so a new image scored like a validation one
    falls on the same side. Equal F1s: the higher threshold (fewer labels claimed). A label
    with no positive image gets UNTUNED_THRESHOLD.
    """
    probs = np.asarray(probs, np.float64)
    truth = np.asarray(truth) > 0.5
    if probs.ndim != 2 or probs.shape != truth.shape:
        raise ValueError(f"probs {probs.shape} and truth {truth.shape} must both be (images, labels)")
    return np.asarray([_best_threshold(probs[:, c], truth[:, c]) for c in range(probs.shape[1])], np.float64)


def _best_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    n_positive = int(positive.sum())
    if n_positive == 0:
        return UNTUNED_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # Cutting after row k predicts rows 0..k; only cuts where the next score is lower are real.
    cut = np.flatnonzero(np.append(scores[1:] < scores[:-1], True))
    true_pos = np.cumsum(positive)[cut]
    predicted = cut + 1
    f1 = 2 * true_pos / (predicted + n_positive)
    best = cut[int(np.argmax(f1))]  # the first maximum: the highest threshold
    below = scores[best + 1] if best + 1 < len(scores) else 0.0
    return float((scores[best] + below) / 2)


def multi_hot(label_sets, class_names: list[str]) -> np.ndarray:
    """(N, C) float32, 1 where image i has class c; labels not in `class_names` are left out."""
    index = {name: c for c, name in enumerate(class_names)}
    hot = np.zeros((len(label_sets), len(class_names)), np.float32)
    for i, labels in enumerate(label_sets):
        hot[i, [index[label] for label in labels if label in index]] = 1
    return hot


def rarest_labels(truth: np.ndarray) -> list[int]:
    """Each image's rarest label (the one fewest images have; the first of equals), -1 for none:
    the key a stratified split keeps in proportion, so that a rare label gets validation images
    even when it always comes with a common one."""
    truth = np.asarray(truth) > 0.5
    rarity = np.where(truth, truth.sum(0)[None, :], np.iinfo(np.int64).max)
    return [int(c) if row.any() else -1 for c, row in zip(rarity.argmin(1), truth)]


def positive_weights(truth: np.ndarray, limit: float) -> np.ndarray:
    """Per label, the weight of a positive in the loss: negatives / positives, so that a label's
    positives weigh as much as its negatives in all, kept within [1/limit, limit] (a label on one
    image in a hundred would otherwise weigh its few positives 99 times and swing on each).
    A label with no positive, or no negative, gets 1: there is nothing to balance."""
    truth = np.asarray(truth) > 0.5
    positives, negatives = truth.sum(0), (~truth).sum(0)
    ratio = np.divide(negatives, positives, out=np.ones(truth.shape[1]), where=(positives > 0) & (negatives > 0))
    return np.clip(ratio, 1 / limit, limit).astype(np.float32)


# ---------------------------------------------------------------- metrics


def predicted_sets(probs, thresholds) -> np.ndarray:
    """(n, labels) bool: which labels each image carries, probability >= that label's threshold."""
    probs = np.asarray(probs, np.float64)
    return probs >= np.asarray(thresholds, np.float64)[None, :]


def confusion_counts(truth, predicted) -> np.ndarray:
    """(labels, 4) int: TP, FP, FN, TN of each label, from (n, labels) truth and predictions (0/1)."""
    truth, predicted = np.asarray(truth) > 0.5, np.asarray(predicted) > 0.5
    return np.stack([(truth & predicted).sum(0), (~truth & predicted).sum(0),
                     (truth & ~predicted).sum(0), (~truth & ~predicted).sum(0)], axis=1).astype(np.int64)


def precision_recall_f1(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label precision, recall and F1 from `confusion_counts` rows; 0 where undefined (no
    predicted positive, no true positive), as scikit-learn's zero_division=0."""
    tp, fp, fn = (np.asarray(counts, np.float64)[:, i] for i in range(3))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
    return precision, recall, f1


def micro_f1(counts) -> float:
    """F1 of every (image, label) decision pooled: 2 TP / (2 TP + FP + FN) over all labels."""
    tp, fp, fn = np.asarray(counts, np.int64)[:, :3].sum(0)
    return float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else 0.0


def macro_f1(counts) -> float:
    """The mean F1 over labels. A label neither present nor predicted anywhere has no F1 (it made
    no mistake to count, nor anything right), so it is left out rather than counted 0 or 1."""
    counts = np.asarray(counts, np.int64)
    seen = counts[:, :3].sum(1) > 0
    return float(precision_recall_f1(counts)[2][seen].mean()) if seen.any() else 0.0


def exact_match(truth, predicted) -> float:
    """The share of images whose predicted label set is exactly the true one (subset accuracy)."""
    truth, predicted = np.asarray(truth) > 0.5, np.asarray(predicted) > 0.5
    return float((truth == predicted).all(axis=1).mean()) if len(truth) else 0.0


def average_precision(scores, truth) -> float | None:
    """Average precision of one label: the precision at each distinct score, weighted by the
    recall it adds, sum((R_k - R_{k-1}) P_k) down the ranking (scikit-learn's
    average_precision_score; tied scores count as one step). None when no image has the label."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth) > 0.5
    if not truth.any():
        return None
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(truth)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(probs, truth) -> tuple[float, list[float | None]]:
    """(mAP, AP per label): the mean over the labels that some image has (others have no AP)."""
    probs, truth = np.asarray(probs), np.asarray(truth)
    per_label = [average_precision(probs[:, j], truth[:, j]) for j in range(probs.shape[1])]
    defined = [ap for ap in per_label if ap is not None]
    return (float(np.mean(defined)) if defined else 0.0), per_label


def multilabel_metrics(truth, probs, thresholds, labels: list[str]) -> dict:
    """Every figure `tlcli evaluate` reports for a multi-label model, as metrics.json holds them:
    mAP, micro and macro F1, exact-match accuracy, and per label its threshold, precision,
    recall, F1, AP, support and TP/FP/FN/TN."""
    truth = np.asarray(truth) > 0.5
    probs = np.asarray(probs, np.float64)
    predicted = predicted_sets(probs, thresholds)
    counts = confusion_counts(truth, predicted)
    precision, recall, f1 = precision_recall_f1(counts)
    mean_ap, ap = mean_average_precision(probs, truth)
    per_class = {
        name: {"threshold": float(thresholds[j]), "precision": float(precision[j]), "recall": float(recall[j]),
               "f1": float(f1[j]), "ap": ap[j], "support": int(counts[j, 0] + counts[j, 2]),
               "tp": int(counts[j, 0]), "fp": int(counts[j, 1]), "fn": int(counts[j, 2]), "tn": int(counts[j, 3])}
        for j, name in enumerate(labels)
    }
    return {
        "n_images": int(len(truth)),
        "multi_label": True,
        "map": mean_ap,
        "micro_f1": micro_f1(counts),
        "macro_f1": macro_f1(counts),
        "exact_match": exact_match(truth, predicted),
        "per_class": per_class,
        "class_names": list(labels),
    }
