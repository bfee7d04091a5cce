"""`tlcli evaluate`: a model's accuracy, loss and per-class scores on a labelled folder.

Any model kind runs on the same `tlcli.runtime` Runner as in `tlcli predict` (so a .keras model
and its .tflite exports can be compared on equal terms), and the metrics are plain numpy. The
images of DATA_DIR are matched to the model by class *name* (tlcli.evalset). DATA_DIR may be
a URL TensorFlow reads (gs://…): it stays a string throughout (`tlcli.fs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from tlcli import fs
from tlcli.calibration import ECE_BINS, calibration_report, reliability_bins
from tlcli.data import is_file_list
from tlcli.evalset import load_eval_set, load_multilabel_set
from tlcli.labelfile import Columns, skipped_count
from tlcli.errors import TlcliError
from tlcli.images import ImageError, load_image
from tlcli.predict import classify
from tlcli.progress import Step, make_progress
from tlcli.rundir import ModelRef, owning_run, write_csv, write_json
from tlcli.runtime import TTARunner, open_model, run_batches

_EPSILON = 1e-7  # Keras clips probabilities to [eps, 1 - eps] in its cross-entropy; so do we


# ---------------------------------------------------------------- metrics (numpy only)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def compute_metrics(y_true, probs, class_names: list[str], top_k: int = 3) -> dict:
    """Accuracy, top-k accuracy, cross-entropy loss, per-class precision/recall/F1/support,
    their macro and support-weighted averages, and the confusion matrix.

    A class that is never predicted has precision 0 (and never-present classes recall 0), as in
    scikit-learn with zero_division=0. The loss is plain cross-entropy (no label smoothing).
    """
    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, np.float64)
    n, k_classes = probs.shape
    if n == 0:
        raise TlcliError("no images to evaluate.")
    k = max(1, min(top_k, k_classes))
    y_pred = probs.argmax(axis=1)
    true_p = probs[np.arange(n), y_true]
    # As tf.math.in_top_k: the true class is in the top k unless k classes score strictly higher.
    in_top_k = (probs > true_p[:, None]).sum(axis=1) < k
    normalised = probs / np.maximum(probs.sum(axis=1, keepdims=True), _EPSILON)
    loss = -np.log(np.clip(normalised[np.arange(n), y_true], _EPSILON, 1 - _EPSILON))

    matrix = confusion_matrix(y_true, y_pred, k_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k_classes), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(k_classes), where=denominator > 0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    weights = support / support.sum()
    return {
        "n_images": int(n),
        "accuracy": float((y_pred == y_true).mean()),
        "top_k": int(k),
        "top_k_accuracy": float(in_top_k.mean()),
        "loss": float(loss.mean()),
        "per_class": per_class,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted_avg": {"precision": float(precision @ weights), "recall": float(recall @ weights),
                         "f1": float(f1 @ weights)},
        "class_names": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }


def default_output(ref: ModelRef) -> Path:
    """<run>/eval/ for a run's own model.keras; <run>/eval/<file name>/ (eval/model.onnx/) for any
    other model of the run (exports, SavedModels), so evaluating one never overwrites another's
    results: the whole name, as model.tflite and model.onnx share an export folder and a stem."""
    run = owning_run(ref)
    base = run if run is not None else ref.path.parent
    if run is not None and ref.kind == "keras" and ref.path.resolve() == (run / "model.keras").resolve():
        return run / "eval"
    return base / "eval" / ref.path.name


# ---------------------------------------------------------------- the command


@dataclass
class EvalResult:
    metrics: dict
    out_dir: Path


def evaluate(data_dir: str | Path, ref: ModelRef, split: str | None = None, output: str | Path | None = None,
             top_k: int = 3, batch_size: int = 32, max_errors: int = 16, console: Console | None = None,
             quiet: bool = False, explain: bool = False, tta: str | None = None,
             columns: Columns | None = None, label_delimiter: str | None = None) -> EvalResult:
    """Evaluate the model `ref` on a split of DATA_DIR (or of a label file: `columns` names its
    path and label columns when they are not found by name); write metrics.json, predictions.csv,
    confusion_matrix.png, reliability.png and errors.png into `output` (default: see
    `default_output`). `explain`: errors.png shows each mistake's Grad-CAM heatmap beside it
    (Keras models only). `tta` (flip, flip+crops): the figures are those of the probabilities
    averaged over the views, and metrics.json's `tta` holds them without (the plain image is one
    of the views, so one pass gives both). A multi-label model gets its own figures and pictures
    (`tlcli.evaluate_multilabel`); a label file's cells are split at `label_delimiter` (default:
    its run's)."""
    console = console or Console(stderr=True)
    if explain:  # fail before any work: Grad-CAM needs the Keras model
        from tlcli.explain import require_keras

        require_keras(ref)
    if top_k < 1:
        raise TlcliError("--top-k must be at least 1.")
    if max_errors < 0:
        raise TlcliError("--max-errors must be 0 or more.")
    if not fs.is_dir(data_dir) and not is_file_list(data_dir):
        raise TlcliError(f"'{data_dir}' is not a folder of images or a label file.")
    start = time.perf_counter()
    runner = open_model(ref)
    views = TTARunner(runner, tta, average=False) if tta else runner  # (n, views, classes): plain first
    multi_label = getattr(runner, "multi_label", False)  # runners made by hand (tests) may not say
    if label_delimiter is not None and not multi_label:
        raise TlcliError(f"--label-delimiter is for a multi-label model; '{ref.path}' gives one class per image.")
    if multi_label:
        data = load_multilabel_set(data_dir, ref, runner.labels, runner.image_size, split, console, quiet, columns,
                                   label_delimiter)
    else:
        data = load_eval_set(data_dir, ref, runner.labels, runner.image_size, split, console, quiet, columns)
    with make_progress(console, quiet) as progress:
        step = Step(progress, "Predicting" + (f" (TTA: {tta})" if tta else ""))
        step.start(len(data.paths))
        if data.images is not None:
            probs, failed = run_batches(views, data.images, batch_size, step.advance), {}
        else:
            probs, failed = classify(views, data.paths, batch_size, step.advance)
        step.done()
    for note in data.notes:
        if not quiet:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    skipped = list(data.skipped) + [(data.paths[i], reason) for i, reason in sorted(failed.items())]
    keep = np.asarray([i for i in range(len(data.paths)) if i not in failed], int)
    if skipped and not quiet:
        console.print(f"[yellow]skipped {skipped_count(len(skipped), data.bad_rows)}[/]; listed in metrics.json")
    if len(keep) == 0:
        raise TlcliError(f"no readable images in the {data.split} split of {data_dir}.")
    paths = [data.paths[i] for i in keep]
    y_true, probs = data.labels[keep], probs[keep]
    n_views = probs.shape[1] if tta else 1
    plain = probs[:, 0] if tta else None
    probs = probs.mean(axis=1) if tta else probs
    out_dir = Path(output) if output else default_output(ref)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TlcliError(f"cannot create '{out_dir}': {error.strerror or error}.") from None

    def pixels(i: int) -> np.ndarray:  # exactly what the model saw
        return data.images[keep[i]] if data.images is not None else load_image(paths[i], runner.image_size)

    head = {"model": str(ref.path), "kind": ref.kind, "data_dir": str(data_dir), "split": data.split}
    tail = {"n_skipped": len(skipped), "skipped": [{"path": p, "reason": r} for p, r in skipped]}
    if multi_label:
        from tlcli.evaluate_multilabel import write_report

        return EvalResult(write_report(out_dir, head, tail, paths, y_true, probs, runner.labels, runner.thresholds,
                                       pixels, max_errors=max_errors, start=start, plain=plain, tta=tta,
                                       views=n_views, classifier=runner.model if explain else None), out_dir)
    metrics = compute_metrics(y_true, probs, runner.labels, top_k)
    y_pred = probs.argmax(axis=1)
    confidence = probs[np.arange(len(paths)), y_pred]
    wrong = [int(i) for i in np.argsort(-confidence, kind="stable") if y_pred[i] != y_true[i]][:max_errors]
    labels = runner.labels
    report = {
        **head,
        **metrics,
        "calibration": calibration_figures(probs, y_true),
        **({"tta": tta_figures(tta, n_views, plain, y_true, runner.labels, top_k)} if tta else {}),
        **tail,
        "worst_errors": [{"path": paths[i], "true": labels[y_true[i]], "predicted": labels[y_pred[i]],
                          "confidence": float(confidence[i])} for i in wrong],
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out_dir / "metrics.json", report)
    write_csv(out_dir / "predictions.csv", ["path", "true", "predicted", "confidence", "correct"],
              [[paths[i], labels[y_true[i]], labels[y_pred[i]], round(float(confidence[i]), 6),
                int(y_pred[i] == y_true[i])] for i in range(len(paths))])
    from tlcli.plots import plot_confusion_matrix, plot_reliability

    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), labels, out_dir / "confusion_matrix.png")
    calibration = report["calibration"]
    plot_reliability(reliability_bins(probs, y_true), out_dir / "reliability.png",
                     f"ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f}: {calibration['verdict']}"
                     + (f" (TTA: {tta})" if tta else ""))

    captions = {i: f"{fs.name(paths[i])[:28]}\ntrue: {labels[y_true[i]]}\npred: {labels[y_pred[i]]} ({confidence[i]:.0%})"
                for i in wrong}
    if explain:  # each mistake beside its heatmap for the predicted class: why the model got it wrong
        from tlcli.explain import with_heatmaps

        pixels = with_heatmaps(runner.model, labels, pixels, {i: int(y_pred[i]) for i in wrong})
    _error_gallery(out_dir / "errors.png", wrong, pixels, captions, n_wrong=int((y_pred != y_true).sum()),
                   explained=explain)
    return EvalResult(report, out_dir)


def calibration_figures(probs: np.ndarray, y_true: np.ndarray) -> dict:
    """ECE (ECE_BINS bins), Brier score, NLL and verdict (`tlcli.calibration`), with the mean
    confidence the verdict compares with the accuracy."""
    return {**calibration_report(probs, y_true), "bins": ECE_BINS,
            "mean_confidence": round(float(probs.max(axis=1).mean()), 5)}


def tta_figures(mode: str, views: int, plain: np.ndarray, y_true: np.ndarray, labels: list[str], top_k: int) -> dict:
    """What the plain image alone scores, beside the TTA figures at the top of metrics.json."""
    m = compute_metrics(y_true, plain, labels, top_k)
    calibration = calibration_report(plain, y_true)
    return {"mode": mode, "views": views,
            "without": {"accuracy": m["accuracy"], "top_k_accuracy": m["top_k_accuracy"], "loss": m["loss"],
                        "ece": calibration["ece"], "brier": calibration["brier"]}}


def _error_gallery(path: Path, wrong: list[int], pixels, captions: dict, n_wrong: int, explained: bool = False) -> None:
    from tlcli.plots import plot_error_gallery

    images, shown = [], []
    for i in wrong:
        try:
            images.append(pixels(i))
            shown.append(captions[i])
        except ImageError:  # changed on disk since it was predicted: leave it out of the picture
            continue
    title = f"Most confident mistakes ({len(images)} of {n_wrong} misclassified)"
    if explained:
        title += "\nright of each: Grad-CAM heatmap of the predicted class (red: what it looked at)"
    plot_error_gallery(np.asarray(images), shown, path, title)
