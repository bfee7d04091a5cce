"""Multi-label figures from probabilities and multi-hot truth, in NumPy alone.

`probs` and `truth` are (N, C): one independent probability per image and label, and 1 where
the image has the label. Training tunes one threshold per label on the validation images
(`tune_thresholds`); predict, evaluate and export then apply them, and score with the metrics.
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
