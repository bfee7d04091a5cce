"""Probabilities an app can act on: temperature scaling, and how to measure calibration.

Fine-tuned networks are overconfident; label smoothing pushes the other way. One temperature T,
fitted on the validation images, divides the logits: softmax(z / T). Since the classifier's last
layer is dense + softmax, dividing that layer's kernel and bias by T gives the same result with
no extra layer, so model.keras and every export carry it (`fold_temperature`).

numpy only: `evaluate` measures calibration without TensorFlow for .tflite and .onnx models.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
_EPS = 1e-12


def logits_of(probabilities: np.ndarray) -> np.ndarray:
    """Logits up to a constant per row (softmax ignores it): the log-probabilities."""
    return np.log(np.clip(np.asarray(probabilities, np.float64), _EPS, 1.0))


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities a model gives once its logits are divided by `temperature`."""
    z = logits_of(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (plain cross-entropy)."""
    p = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, _EPS, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, low: float = 0.25, high: float = 10.0) -> float:
    """The temperature in [low, high] that minimises the NLL of `labels`: a 1-D search on log T.

    The bounds keep a validation set the model gets entirely right from sharpening without end.

    The NLL is smooth and unimodal in log T, so a golden-section search converges; a coarse grid
    first keeps it away from a flat edge.
    """
    labels = np.asarray(labels)
    f = lambda log_t: nll(with_temperature(probabilities, float(np.exp(log_t))), labels)  # noqa: E731
    grid = np.linspace(np.log(low), np.log(high), 25)
    best = int(np.argmin([f(g) for g in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(40):
        if f(c) < f(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(np.exp((a + b) / 2))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins,
    weighted by how many predictions fall in each."""
    confidence, correct = _confidence_and_correct(probabilities, labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance between the probabilities and the one-hot truth, summed over classes."""
    p = np.asarray(probabilities, np.float64)
    onehot = np.eye(p.shape[1])[labels]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """Per confidence bin: (lower edge, upper edge, count, mean confidence, accuracy); for the diagram."""
    confidence, correct = _confidence_and_correct(probabilities, labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        n = int(members.sum())
        rows.append((float(edges[b]), float(edges[b + 1]), n, float(confidence[members].mean()) if n else None,
                     float(correct[members].mean()) if n else None))
    return rows


def confidence_verdict(probabilities: np.ndarray, labels: np.ndarray) -> str:
    """'over-confident', 'under-confident' or 'well calibrated' (mean confidence within 2 points)."""
    confidence, correct = _confidence_and_correct(probabilities, labels)
    gap = float(confidence.mean() - correct.mean())
    if abs(gap) <= 0.02:
        return "well calibrated"
    return "over-confident" if gap > 0 else "under-confident"


def calibration_report(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """ECE, Brier score, NLL and the verdict, as metrics.json records them."""
    return {"ece": round(expected_calibration_error(probabilities, labels), 5),
            "brier": round(brier(probabilities, labels), 5), "nll": round(nll(probabilities, labels), 5),
            "verdict": confidence_verdict(probabilities, labels)}


def fold_temperature(model, temperature: float) -> None:
    """Divide the classifier's final dense layer by `temperature`, in place: its softmax output is
    then the calibrated probabilities, in model.keras and in everything exported from it."""
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])


def _confidence_and_correct(probabilities: np.ndarray, labels: np.ndarray):
    p = np.asarray(probabilities, np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
