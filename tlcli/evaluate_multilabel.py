"""`tlcli evaluate` on a multi-label model: its figures and pictures, once its images are predicted.

A multi-label model gives each image every label whose probability reaches the label's threshold
(tuned in training). `tlcli.evaluate` loads and predicts the images as for any model, then hands
over here for what differs:

  metrics.json         mAP, micro and macro F1, exact-match accuracy (also `accuracy`, as `tlcli
                       runs` shows it), the loss (binary cross-entropy, mean over labels), and
                       per label its threshold, precision, recall, F1, AP, support and TP/FP/FN/TN
  predictions.csv      per image: true labels, predicted labels, exact match, every probability
  label_confusion.png  each label's 2x2 confusion counts
  errors.png           a contact sheet of the most confident false positives and false negatives

There are no calibration figures: those measure the top class of a softmax model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlcli import fs
from tlcli.images import ImageError
from tlcli.multilabel import multilabel_metrics, predicted_sets
from tlcli.rundir import write_csv, write_json

CONFUSION_PNG = "label_confusion.png"
_EPSILON = 1e-7  # probabilities clipped to [eps, 1 - eps] in the loss, as Keras does


def write_report(out_dir: Path, head: dict, tail: dict, paths: list[str], truth: np.ndarray, probs: np.ndarray,
                 labels: list[str], thresholds, pixels, *, max_errors: int, start: float, plain=None,
                 tta: str | None = None, views: int = 1, classifier=None) -> dict:
    """Write metrics.json, predictions.csv, label_confusion.png and errors.png into `out_dir`;
    return metrics.json's contents.

    `truth` (n, labels) 0/1 and `probs` (n, labels) belong to `paths`; `pixels(i)` is what the
    model saw of image i. `head` (model, data, split) and `tail` (skipped files) are evaluate's.
    With `tta`, `probs` are averaged over `views` views and `plain` are the plain image's. With
    `classifier` (the Keras model), each mistake shows its Grad-CAM heatmap of its label.
    """
    thresholds = np.asarray(thresholds, np.float64)
    metrics = multilabel_metrics(truth, probs, thresholds, labels)
    predicted = predicted_sets(probs, thresholds)
    mistakes = confident_mistakes(truth, probs, predicted, max_errors)
    report = {**head, **metrics, "accuracy": metrics["exact_match"], "loss": binary_cross_entropy(truth, probs),
              "calibration": {"skipped": "multi-label: no calibration figures (they measure a softmax's top class)"},
              **({"tta": _without_tta(tta, views, plain, truth, thresholds, labels)} if tta else {}), **tail,
              "worst_errors": [{"path": paths[i], "label": labels[j], "error": kind, "probability": float(probs[i, j]),
                                "threshold": float(thresholds[j])} for i, j, kind in mistakes],
              "seconds": round(time.perf_counter() - start, 2)}
    write_json(out_dir / "metrics.json", report)
    truth = np.asarray(truth) > 0.5
    write_csv(out_dir / "predictions.csv", ["path", "true", "predicted", "exact_match", *labels],
              [[paths[i], _joined(labels, truth[i]), _joined(labels, predicted[i]), int((truth[i] == predicted[i]).all()),
                *(round(float(p), 6) for p in probs[i])] for i in range(len(paths))])
    from tlcli.plots import plot_label_confusion

    plot_label_confusion(metrics["per_class"], out_dir / CONFUSION_PNG)
    _mistake_sheet(out_dir / "errors.png", mistakes, paths, probs, thresholds, truth, labels, pixels, classifier)
    return report


def confident_mistakes(truth, probs, predicted, limit: int) -> list[tuple[int, int, str]]:
    """The `limit` most confident wrong decisions as (image, label, "false positive" or "false
    negative"), surest first: a false positive is as sure as its probability, a false negative as
    one minus it. Half of each kind when there are enough of both."""
    truth, predicted, probs = np.asarray(truth) > 0.5, np.asarray(predicted), np.asarray(probs, np.float64)
    kinds = []
    for name, wrong, sureness in (("false positive", predicted & ~truth, probs), ("false negative", ~predicted & truth,
                                                                                   1.0 - probs)):
        cells = np.argwhere(wrong)
        order = np.argsort(-sureness[wrong], kind="stable")
        kinds.append([(float(sureness[i, j]), int(i), int(j), name) for i, j in cells[order]])
    fps, fns = kinds
    n_fp = min(len(fps), max(limit - len(fns), -(-limit // 2)))
    chosen = fps[:n_fp] + fns[:max(0, limit - n_fp)]
    return [(i, j, name) for _, i, j, name in sorted(chosen, key=lambda c: -c[0])]


def binary_cross_entropy(truth, probs) -> float:
    """The mean over images and labels of -log p (present) or -log(1 - p) (absent)."""
    p = np.clip(np.asarray(probs, np.float64), _EPSILON, 1 - _EPSILON)
    truth = np.asarray(truth) > 0.5
    return float(-np.where(truth, np.log(p), np.log(1 - p)).mean()) if p.size else 0.0


def _without_tta(mode: str, views: int, plain, truth, thresholds, labels: list[str]) -> dict:
    """What the plain image alone scores, beside the TTA figures at the top of metrics.json."""
    m = multilabel_metrics(truth, plain, thresholds, labels)
    return {"mode": mode, "views": views,
            "without": {key: m[key] for key in ("map", "micro_f1", "macro_f1", "exact_match")}
            | {"loss": binary_cross_entropy(truth, plain)}}


def _joined(labels: list[str], row) -> str:
    return ";".join(label for label, on in zip(labels, row) if on)


def _mistake_sheet(path: Path, mistakes: list, paths: list[str], probs, thresholds, truth, labels: list[str], pixels,
                   classifier=None) -> None:
    """errors.png: a contact sheet of `mistakes`, each image captioned with the label it got wrong,
    its probability and threshold, and the image's true labels; with `classifier`, each image
    beside its Grad-CAM heatmap of that label."""
    from tlcli.overlay import contact_sheet, load_original, readable

    if classifier is not None:
        from tlcli.explain import with_heatmaps

        pixels_of = with_heatmaps(classifier, labels, lambda k: pixels(mistakes[k][0]),
                                  {k: j for k, (_, j, _) in enumerate(mistakes)})
    tiles = []
    for k, (i, j, kind) in enumerate(mistakes):
        try:
            image = pixels_of(k) if classifier is not None else load_original(paths[i])
        except ImageError:  # changed on disk since it was predicted: leave it out of the picture
            continue
        true = ", ".join(label for label, on in zip(labels, truth[i]) if on) or "none"
        tiles.append((readable(np.asarray(image, np.uint8)),
                      [fs.name(paths[i]), f"{kind}: {labels[j]}", f"p {probs[i, j]:.2f} (threshold {thresholds[j]:.2f})",
                       f"true: {true}"]))
    if not tiles:
        from tlcli.plots import plot_error_gallery

        plot_error_gallery(np.zeros((0, 1, 1, 3), np.uint8), [], path)
        return
    fp = sum(1 for _, _, kind in mistakes if kind == "false positive")
    note = (f"Most confident mistakes: {fp} false positive(s), {len(mistakes) - fp} false negative(s)"
            + ("; beside each, the Grad-CAM heatmap of its label" if classifier is not None else ""))
    contact_sheet(tiles, path, note)
