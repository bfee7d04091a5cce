"""The end of a training run: the best weights saved, the saved file checked, the run complete.

    finalize (on every host)  -> best weights in model.keras, metrics, history.csv, curves.png
    complete (the chief only) -> model.keras run on the validation images and compared with the
                                 figures training recorded, calibration (single-label) or
                                 thresholds.json (multi-label), metrics.json, .complete

Imported only by the commands that train: importing it imports Keras.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tlcli import checkpoint, multilabel, objective
from tlcli.callbacks import stopped_early, write_history
from tlcli.images import decode_batches
from tlcli.model import load_classifier
from tlcli.calibration import calibration_report, fit_temperature, fold_temperature, with_temperature
from tlcli.rundir import mark_complete, save_model, write_json

MIN_CALIBRATION_IMAGES = 20  # one temperature from fewer validation images fits their noise


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


def finalize(s, keeper) -> TrainResult:
    """The best weights in model.keras (float32 whatever the training policy), metrics, history,
    for the training Session `s`. `complete` then checks the saved file and marks the run complete."""
    keeper.restore()
    keeper.flush()
    history, data = s.state["history"], s.data
    # The best epoch's validation figures are those of model.keras: the cached stem computes
    # exactly what the full model does (tests check this against model.keras on the images).
    # Multi-label: the score is Keras's mAP (history.csv's val_map); `complete` adds the exact
    # figures at the tuned thresholds, val_accuracy among them.
    score, val_loss = keeper.best[0], -keeper.best[1]
    metrics = {
        "val_pr_auc" if s.config.multi_label else "val_accuracy": float(score),
        "val_loss": float(val_loss),
        "best_epoch": keeper.best_epoch,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test) if data.test else 0,
        "n_skipped": len(data.skipped),
        "n_classes": s.n_classes,
        "seconds": {**{k: round(v, 2) for k, v in s.seconds.items()}, "total": round(sum(s.seconds.values()), 2)},
        **{k: round(v, 1) for k, v in s.throughput.items()},
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "resumed": s.resumed,
    }
    if s.config.patience:
        metrics["stopped_early"] = stopped_early(history)  # {"phase1": epoch, …}: the phases --patience ended
    if s.pos_weight is not None:
        metrics["pos_weights"] = {name: round(float(w), 4) for name, w in zip(data.class_names, s.pos_weight)}
    write_history(s.run, history)
    return TrainResult(s.run, metrics, history)


def complete(result: TrainResult, data, config, say) -> tuple[np.ndarray, np.ndarray]:
    """Check the saved model.keras on the validation images against the figures recorded for its
    epoch (as Ultralytics' final_eval does), then write metrics.json and mark the run complete.

    A disagreement means the file does not compute what training measured (a wrong epoch's
    weights, a float16 model, a preprocessing mismatch): it is reported, and recorded in
    metrics.json, rather than hidden. Returns the validation labels and the saved model's answers.
    """
    model = load_classifier(result.run_dir / "model.keras")
    outputs, rows = [], []  # batch by batch: only the probabilities are kept
    for decoded, images, _ in decode_batches(data.val.paths, config.image_size, config.batch_size):
        outputs.append(np.asarray(model.predict_on_batch(images.astype(np.float32))))
        rows += decoded
    probabilities = np.concatenate(outputs)
    labels = data.val.labels[np.asarray(rows, np.int64)]
    if config.multi_label:
        return _complete_multilabel(result, data, config, say, probabilities, labels)
    onehot = np.eye(len(data.class_names), dtype=np.float32)[labels]
    accuracy = float((probabilities.argmax(1) == labels).mean())
    loss = float(keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)(onehot, probabilities))
    metrics = result.metrics
    agrees = abs(accuracy - metrics["val_accuracy"]) < 1e-6 and abs(loss - metrics["val_loss"]) <= 1e-3 * max(1.0, loss)
    metrics["saved_model_check"] = {"val_accuracy": accuracy, "val_loss": round(loss, 5), "agrees": agrees}
    if not agrees:
        say(f"[yellow]warning:[/] model.keras scores {accuracy:.4f} accuracy / {loss:.4f} loss on the validation "
            f"images, but training recorded {metrics['val_accuracy']:.4f} / {metrics['val_loss']:.4f} for its epoch.")
    if config.calibrate:
        metrics["calibration"] = _calibrate(model, result.run_dir / "model.keras", probabilities, labels)
        if "temperature" in metrics["calibration"]:
            say(f"Calibrated: temperature {metrics['calibration']['temperature']:.2f}, validation ECE "
                f"{metrics['calibration']['before']['ece']:.3f} -> {metrics['calibration']['after']['ece']:.3f}")
    _write(result, metrics)
    return labels, probabilities.argmax(1)


def _write(result: TrainResult, metrics: dict) -> None:
    write_json(result.run_dir / "metrics.json", metrics)
    checkpoint.remove_last(result.run_dir)
    mark_complete(result.run_dir)


def _complete_multilabel(result: TrainResult, data, config, say, probabilities: np.ndarray,
                         truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`complete` for a multi-label run: the saved model checked against the mAP and loss
    training recorded for its epoch, one threshold per label tuned on the validation images
    (thresholds.json), and the figures at those thresholds. No temperature: see below."""
    metrics = result.metrics
    pos_weight = None if "pos_weights" not in metrics else np.asarray(list(metrics["pos_weights"].values()))
    saved = objective.scores(config, truth, probabilities, pos_weight)
    agrees = abs(saved["map"] - metrics["val_pr_auc"]) < 1e-4 and \
        abs(saved["loss"] - metrics["val_loss"]) <= 1e-3 * max(1.0, saved["loss"])
    metrics["saved_model_check"] = {"val_pr_auc": round(saved["map"], 5), "val_loss": round(saved["loss"], 5),
                                    "agrees": agrees}
    if not agrees:
        say(f"[yellow]warning:[/] model.keras scores {saved['map']:.4f} mAP / {saved['loss']:.4f} loss on the "
            f"validation images, but training recorded {metrics['val_pr_auc']:.4f} / {metrics['val_loss']:.4f} "
            "for its epoch.")
    thresholds = multilabel.tune_thresholds(probabilities, truth)
    write_json(result.run_dir / "thresholds.json", {"labels": list(data.class_names),
                                                    "thresholds": [round(float(t), 6) for t in thresholds],
                                                    "tuned_on": "val", "metric": "f1"})
    predicted = multilabel.predicted_sets(probabilities, thresholds)
    counts = multilabel.confusion_counts(truth, predicted)
    metrics.update({"val_map": multilabel.mean_average_precision(probabilities, truth)[0],
                    "val_macro_f1": multilabel.macro_f1(counts), "val_micro_f1": multilabel.micro_f1(counts),
                    "val_exact_match": multilabel.exact_match(truth, predicted)})
    metrics["val_accuracy"] = metrics["val_exact_match"]  # what `tlcli runs` lists: the whole set right
    if config.calibrate:
        # One temperature for every label would shift each label's probabilities against the
        # threshold tuned for it; the tuned thresholds are what turns them into answers.
        metrics["calibration"] = {"skipped": "multi-label: each label's threshold is tuned on the validation "
                                             "images instead (thresholds.json)"}
    say(f"Thresholds tuned on {len(truth)} validation images: macro F1 {metrics['val_macro_f1']:.3f}, "
        f"exact match {metrics['val_exact_match']:.3f}, mAP {metrics['val_map']:.3f}")
    _write(result, metrics)
    return truth, predicted


def _calibrate(model, path: Path, probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Fit a temperature on the validation probabilities, fold it into the saved model, and say
    what it changed. Too few images would fit noise: below MIN_CALIBRATION_IMAGES it is skipped."""
    if len(labels) < MIN_CALIBRATION_IMAGES:
        return {"skipped": f"fewer than {MIN_CALIBRATION_IMAGES} validation images"}
    if (probabilities.argmax(1) == labels).all():
        # With no mistake to weigh, the NLL falls without end as T shrinks: a fit would only
        # sharpen every answer to the bound, claiming a certainty 20 images cannot show.
        return {"skipped": "every validation image is right: no mistake to calibrate against"}
    temperature = fit_temperature(probabilities, labels)
    fold_temperature(model, temperature)
    save_model(model, path)
    return {"temperature": round(temperature, 4), "before": calibration_report(probabilities, labels),
            "after": calibration_report(with_temperature(probabilities, temperature), labels)}


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024
