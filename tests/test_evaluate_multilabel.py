"""`tlcli evaluate` on a multi-label model: its figures against a hand computation, its files, and
which mistakes its gallery shows."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


def test_evaluate_agrees_with_a_hand_computation(cli, fixed_multilabel_run, tmp_path):
    """Every image is predicted {circle, square} (see conftest.FIXED_PROBS). The test rows are
    {circle, square}, {circle}, {triangle}, {square, triangle}, so per label:
    circle TP 2 FP 2, square TP 2 FP 2, triangle FN 2 TN 2."""
    data = json.loads((fixed_multilabel_run / "config.json").read_text())["data_dir"]
    out = tmp_path / "eval"
    result = cli(["evaluate", data, "--model", fixed_multilabel_run, "-o", out, "--json", "--max-errors", "3"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert (m["split"], m["n_images"], m["multi_label"]) == ("test", 4, True)
    counts = {name: [s[k] for k in ("tp", "fp", "fn", "tn")] for name, s in m["per_class"].items()}
    assert counts == {"circle": [2, 2, 0, 0], "square": [2, 2, 0, 0], "triangle": [0, 0, 2, 2]}
    # One tie of 4 images holding 2 positives: precision 1/2 at recall 1, for every label.
    assert [s["ap"] for s in m["per_class"].values()] == pytest.approx([0.5] * 3) and m["map"] == pytest.approx(0.5)
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 4 + 2))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["exact_match"] == m["accuracy"] == 0.25
    # Mean of -log 0.8, -log 0.2, -log 0.3, -log 0.7, -log 0.55, -log 0.45 over the 12 cells.
    cells = {"circle": [0.8, 0.8, 0.2, 0.2], "square": [0.3, 0.7, 0.7, 0.3], "triangle": [0.45, 0.45, 0.55, 0.55]}
    assert m["loss"] == pytest.approx(-np.mean(np.log(sum(cells.values(), []))), abs=1e-6)
    # The surest mistakes: circle's false positives (0.8), then triangle's false negative (1 - 0.55).
    assert [(e["label"], e["error"]) for e in m["worst_errors"]] == [
        ("circle", "false positive"), ("circle", "false positive"), ("triangle", "false negative")]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(r["true"], r["predicted"], r["exact_match"]) for r in rows] == [
        ("circle;square", "circle;square", "1"), ("circle", "circle;square", "0"),
        ("triangle", "circle;square", "0"), ("square;triangle", "circle;square", "0")]
    assert float(rows[0]["triangle"]) == pytest.approx(0.55)
    assert all((out / name).stat().st_size > 1000 for name in ("label_confusion.png", "errors.png"))


def test_labels_the_model_does_not_know_are_a_one_line_error(cli, fixed_multilabel_run, tmp_path):
    data = json.loads((fixed_multilabel_run / "config.json").read_text())["data_dir"]
    result = cli(["evaluate", data, "--model", fixed_multilabel_run, "-o", tmp_path, "--label-delimiter", "|"])
    assert result.exit_code == 2
    assert "labels the model does not know: circle;square, square;triangle." in result.output


def test_the_gallery_takes_the_surest_of_each_kind_of_mistake():
    from tlcli.evaluate_multilabel import confident_mistakes

    truth = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    probs = np.array([[0.15, 0.9], [0.3, 0.6], [0.7, 0.2], [0.45, 0.05]])
    predicted = probs >= 0.5
    # False positives: (0, 1) sure at 0.9, (2, 0) at 0.7. False negatives: (3, 1) at 1 - 0.05,
    # (0, 0) at 0.85, (3, 0) at 0.55. Three: two of one kind, one of the other, the surer kind
    # not winning both places, though (0, 0) is surer than (2, 0).
    assert confident_mistakes(truth, probs, predicted, 3) == [
        (3, 1, "false negative"), (0, 1, "false positive"), (2, 0, "false positive")]
    assert confident_mistakes(truth, probs, predicted, 4) == [
        (3, 1, "false negative"), (0, 1, "false positive"), (0, 0, "false negative"), (2, 0, "false positive")]
    # Only two false positives: the rest of the places go to false negatives.
    assert [m[2] for m in confident_mistakes(truth, probs, predicted, 10)].count("false negative") == 3
    assert confident_mistakes(truth, probs, predicted, 0) == []


def test_binary_cross_entropy_by_hand():
    from tlcli.evaluate_multilabel import binary_cross_entropy

    assert binary_cross_entropy([[1, 0]], [[0.8, 0.25]]) == pytest.approx(-(np.log(0.8) + np.log(0.75)) / 2)
    assert binary_cross_entropy([[1]], [[0.0]]) == pytest.approx(-np.log(1e-7))  # clipped, not infinite



def test_the_runs_own_validation_split_scores_what_training_recorded(cli, multilabel_run, tmp_path):
    """The shapes run trained by `tlcli train` (conftest): --split val re-makes its validation
    rows from the label file, as training drew them, and scores them as training did."""
    data = json.loads((multilabel_run / "config.json").read_text())["data_dir"]
    result = cli(["evaluate", data, "--model", multilabel_run, "--split", "val", "-o", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    trained = json.loads((multilabel_run / "metrics.json").read_text())
    assert (m["split"], m["n_images"]) == ("val", trained["n_val"])
    assert (m["map"], m["macro_f1"], m["exact_match"]) == pytest.approx(
        (trained["val_map"], trained["val_macro_f1"], trained["val_exact_match"]))
    assert m["macro_f1"] >= 0.9  # issue 18's bar for the synthetic set
    assert {s["reason"].split(" (")[0] for s in m["skipped"]} == {"file not found", "empty label"}  # the planted rows


def test_a_label_delimiter_for_a_single_label_model_is_a_one_line_error(cli, trained_run, image_folder, tmp_path):
    result = cli(["evaluate", image_folder, "--model", trained_run, "-o", tmp_path, "--label-delimiter", ";"])
    assert result.exit_code == 2 and "--label-delimiter is for a multi-label model" in result.output
