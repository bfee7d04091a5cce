"""The tables the commands print."""

import io

from rich.console import Console

from tlcli.tables import predictions_summary


def _row(path, label=None, confidence=None, error=None):
    top = [{"label": label, "confidence": confidence}] if label else []
    return {"path": path, "label": label, "confidence": confidence, "top_k": top, "error": error}


def test_many_predictions_are_summarised_per_class_with_the_first_rows():
    results = ([_row(f"d{i}.jpg", "dots", 0.9 if i % 2 else 0.7) for i in range(20)]
               + [_row(f"s{i}.jpg", "stripes", 0.6) for i in range(9)] + [_row("bad.jpg", error="not an image")])
    console = Console(file=io.StringIO(), width=200)
    for part in predictions_summary(results):
        console.print(part)
    lines = [" ".join(line.replace("│", " ").split()) for line in console.file.getvalue().splitlines()]
    assert "30 predictions" in lines
    assert "dots 20 0.800" in lines and "stripes 9 0.600" in lines and "(could not be read) 1" in lines
    assert "First 5 of 30, and the ones that failed" in lines
    shown = [line.split()[0] for line in lines if line.endswith((".jpg", "not an image")) or ".jpg " in line]
    assert shown == ["d0.jpg", "d1.jpg", "d2.jpg", "d3.jpg", "d4.jpg", "bad.jpg"]
    assert any("--full" in line for line in lines)


def _lines(parts) -> list[str]:
    console = Console(file=io.StringIO(), width=200)
    for part in parts:
        console.print(part)
    return [" ".join(line.replace("│", " ").split()) for line in console.file.getvalue().splitlines()]


def test_the_summary_counts_the_images_labelled_unknown_apart_from_their_classes():
    """An unknown row keeps its top-k (its best class first): it counts as unknown, not as that class."""
    unsure = [{**_row(f"u{i}.jpg", "dots", 0.4 + 0.1 * i), "label": "unknown"} for i in range(3)]
    results = [_row(f"d{i}.jpg", "dots", 0.9) for i in range(12)] + unsure
    lines = _lines(predictions_summary(results))
    assert "dots 12 0.900" in lines
    assert "(unknown: below --min-confidence) 3 0.500" in lines
    assert "First 5 of 15" in lines


def test_the_evaluation_summary_says_calibration_and_accuracy_with_and_without_tta():
    from tlcli.tables import evaluation_tables

    m = {"split": "val", "model": "runs/train", "kind": "keras", "data_dir": "flowers", "accuracy": 0.9,
         "top_k": 3, "top_k_accuracy": 1.0, "loss": 0.3, "n_images": 100, "n_skipped": 0,
         "calibration": {"ece": 0.0512, "brier": 0.1634, "nll": 0.3, "verdict": "over-confident", "bins": 15,
                         "mean_confidence": 0.95},
         "per_class": {"a": {"precision": 1.0, "recall": 0.9, "f1": 0.947, "support": 100}},
         "macro_avg": {"precision": 1.0, "recall": 0.9, "f1": 0.947},
         "weighted_avg": {"precision": 1.0, "recall": 0.9, "f1": 0.947}}
    lines = _lines(evaluation_tables(m))
    assert "accuracy 0.900" in lines and "ECE (15 bins) 0.051" in lines and "Brier score 0.163" in lines
    assert "confidence over-confident (mean 0.950)" in lines
    assert not any("TTA" in line for line in lines)
    m["tta"] = {"mode": "flip", "views": 2, "without": {"accuracy": 0.85, "ece": 0.0721}}
    lines = _lines(evaluation_tables(m))
    assert "accuracy (TTA: flip) 0.900" in lines and "accuracy without TTA 0.850" in lines
    assert "ECE (15 bins) 0.051 (without TTA 0.072)" in lines
