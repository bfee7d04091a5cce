"""`tlcli evaluate`: hand-checked metrics, split and label handling, outputs, and model kinds agreeing."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, FLOWERS, make_folder, requires_flowers
from test_onnx_format import requires_onnx
from test_runtime import convert_tflite, export_savedmodel, lone_onnx, lone_tflite, make_export_folder

OUTPUTS = ("metrics.json", "predictions.csv", "confusion_matrix.png", "reliability.png", "errors.png")


# ---------------------------------------------------------------- metrics by hand


def test_metrics_agree_with_a_hand_computation():
    from tlcli.evaluate import compute_metrics

    probs = np.array([
        [0.70, 0.20, 0.10],  # a -> a
        [0.30, 0.60, 0.10],  # a -> b, a second: in top 2
        [0.10, 0.80, 0.10],  # b -> b
        [0.50, 0.10, 0.40],  # b -> a, b third: not in top 2
        [0.20, 0.20, 0.60],  # c -> c
        [0.25, 0.50, 0.25],  # c -> b, c tied second with a: in top 2 (as tf.math.in_top_k)
    ])
    y = [0, 0, 1, 1, 2, 2]
    m = compute_metrics(y, probs, ["a", "b", "c"], top_k=2)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["top_k"] == 2 and m["top_k_accuracy"] == pytest.approx(5 / 6)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.1, 0.6, 0.25])))
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    expected = {  # precision = tp / predicted, recall = tp / support
        "a": (1 / 2, 1 / 2, 1 / 2, 2),
        "b": (1 / 3, 1 / 2, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 2),
        "c": (1 / 1, 1 / 2, 2 * 1 * (1 / 2) / (1 + 1 / 2), 2),
    }
    for name, (p, r, f1, support) in expected.items():
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p, r, f1, support))
    assert m["macro_avg"]["precision"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert m["weighted_avg"]["f1"] == pytest.approx(m["macro_avg"]["f1"])  # equal supports
    assert m["n_images"] == 6 and m["class_names"] == ["a", "b", "c"]


def test_metrics_never_divide_by_zero():
    from tlcli.evaluate import compute_metrics

    # Class c is never predicted and never present; b is predicted but never present.
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    m = compute_metrics([0, 0], probs, ["a", "b", "c"], top_k=5)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["a"]["precision"] == 1.0 and m["per_class"]["a"]["recall"] == 0.5
    assert m["top_k"] == 3 and m["top_k_accuracy"] == 1.0
    assert m["weighted_avg"]["recall"] == pytest.approx(0.5)  # only a has support
    assert math.isfinite(compute_metrics([0], np.array([[0.0, 1.0, 0.0]]), ["a", "b", "c"])["loss"])


# ---------------------------------------------------------------- the command


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of the shared run, so the default <run>/eval/ can be written."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_evaluate_writes_outputs_and_agrees_with_a_hand_computation(cli, run, tmp_path):
    from tlcli.images import load_image
    from tlcli.model import load_classifier

    data = make_folder(tmp_path / "tiny", per_class=2, seed=7)
    result = cli(["evaluate", data, "--model", run, "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "striped" in result.stdout
    for name in OUTPUTS:
        assert (run / "eval" / name).stat().st_size > 0, name
    m = _metrics(run / "eval")

    # By hand: the model on the images decoded as in training, then the textbook formulas.
    labels = (run / "labels.txt").read_text().split()
    paths = sorted(data.rglob("*.*"))
    y = np.array([labels.index(p.parent.name) for p in paths])
    size = json.loads((run / "config.json").read_text())["image_size"]
    batch = np.stack([load_image(p, size) for p in paths]).astype("float32")
    probs = np.asarray(load_classifier(run / "model.keras")(batch, training=False))
    assert m["n_images"] == 6 and m["split"] == "all" and m["n_skipped"] == 0
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert m["loss"] == pytest.approx(np.mean(-np.log(probs[np.arange(6), y])), rel=1e-4)
    top2 = [y[i] in np.argsort(-probs[i])[:2] for i in range(6)]
    assert m["top_k_accuracy"] == pytest.approx(np.mean(top2))
    support = {name: s["support"] for name, s in m["per_class"].items()}
    assert support == {name: 2 for name in CLASSES}
    matrix = np.array(m["confusion_matrix"])
    assert matrix.sum() == 6 and np.trace(matrix) == int(np.sum(probs.argmax(1) == y))
    wrong = int(np.sum(probs.argmax(1) != y))
    assert len(m["worst_errors"]) == wrong
    _check_calibration(m["calibration"], probs, y)
    assert (run / "eval" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hand_ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Equal-width confidence bins (0, 1/15], (1/15, 2/15], …: |accuracy - confidence| weighted by size."""
    confidence, correct = probs.max(1), probs.argmax(1) == y
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return sum(np.mean(which == b) * abs(correct[which == b].mean() - confidence[which == b].mean())
               for b in range(bins) if np.any(which == b))


def _check_calibration(c: dict, probs: np.ndarray, y: np.ndarray) -> None:
    """metrics.json's calibration against the textbook formulas, computed here."""
    assert c["bins"] == 15
    assert c["ece"] == pytest.approx(_hand_ece(probs, y), abs=1e-5)
    assert c["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(probs.shape[1])[y]) ** 2, axis=1)), abs=1e-5)
    gap = probs.max(1).mean() - np.mean(probs.argmax(1) == y)
    assert c["mean_confidence"] == pytest.approx(probs.max(1).mean(), abs=1e-5)
    assert c["verdict"] == ("well calibrated" if abs(gap) <= 0.02 else "over-confident" if gap > 0 else "under-confident")


class _Unsure:
    """A runner stand-in whose confidences spread over many bins, right and wrong: the evidence
    of brightness and stripes, plus a fixed random projection of a few noisy pixels."""

    labels, image_size, uses_tensorflow = list(CLASSES), 32, False

    def predict(self, images):
        x = np.asarray(images, np.float64) / 255
        brightness, stripes = x.mean(axis=(1, 2, 3)), x.mean(axis=(1, 3)).std(axis=1)
        evidence = np.stack([(brightness - 0.5) * 4, (0.5 - brightness) * 4, stripes * 8], axis=1)
        noisy = x[:, 0, :6].reshape(len(x), -1) - brightness[:, None]
        logits = evidence + noisy @ np.random.default_rng(1).normal(0, 10, (18, 3))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def test_calibration_figures_are_the_textbook_ones_on_a_model_unsure_of_itself(tmp_path, monkeypatch):
    """With right and wrong answers in different confidence bins, so that the 15 bins matter."""
    import tlcli.evaluate
    from tlcli.images import load_image
    from tlcli.rundir import ModelRef

    monkeypatch.setattr(tlcli.evaluate, "open_model", lambda ref: _Unsure())
    data = make_folder(tmp_path / "data", per_class=6, seed=2)
    ref = ModelRef("keras", tmp_path / "model.keras", list(CLASSES), 32, None)
    m = tlcli.evaluate.evaluate(data, ref, output=tmp_path / "ev", quiet=True).metrics
    paths = sorted(data.rglob("*.*"))
    y = np.array([CLASSES.index(p.parent.name) for p in paths])
    probs = _Unsure().predict(np.stack([load_image(p, 32) for p in paths]))
    _check_calibration(m["calibration"], probs, y)
    one_bin = abs(probs.max(1).mean() - np.mean(probs.argmax(1) == y))
    assert abs(_hand_ece(probs, y) - one_bin) > 0.1 and 0 < m["accuracy"] < 1


def test_tta_flip_reports_the_figures_with_and_without_it(cli, run, tmp_path):
    """With --tta flip: the figures of the mean of the model on each image and its mirror, and
    under tta.without those of the image alone, all computed here."""
    from tlcli.images import load_image
    from tlcli.model import load_classifier

    data = make_folder(tmp_path / "tiny", per_class=3, seed=11)
    result = cli(["evaluate", data, "--model", run, "-o", tmp_path / "ev", "--tta", "flip"])
    assert result.exit_code == 0, result.output
    assert "accuracy (TTA: flip)" in result.stdout and "accuracy without TTA" in result.stdout
    m = _metrics(tmp_path / "ev")
    labels = (run / "labels.txt").read_text().split()
    paths = sorted(data.rglob("*.*"))
    y = np.array([labels.index(p.parent.name) for p in paths])
    batch = np.stack([load_image(p, json.loads((run / "config.json").read_text())["image_size"]) for p in paths])
    model = load_classifier(run / "model.keras")
    plain = np.asarray(model(batch.astype("float32"), training=False))
    mirrored = np.asarray(model(np.flip(batch, axis=2).astype("float32"), training=False))
    averaged = (plain + mirrored) / 2
    assert m["tta"]["mode"] == "flip" and m["tta"]["views"] == 2
    assert m["accuracy"] == pytest.approx(np.mean(averaged.argmax(1) == y))
    assert m["loss"] == pytest.approx(np.mean(-np.log(averaged[np.arange(len(y)), y])), rel=1e-4)
    _check_calibration(m["calibration"], averaged, y)
    without = m["tta"]["without"]
    assert without["accuracy"] == pytest.approx(np.mean(plain.argmax(1) == y))
    assert without["loss"] == pytest.approx(np.mean(-np.log(plain[np.arange(len(y)), y])), rel=1e-4)
    assert without["ece"] == pytest.approx(_hand_ece(plain, y), abs=1e-5)
    assert abs(m["loss"] - without["loss"]) > 1e-4  # the mirror changed something: both really were run


def test_val_split_of_a_class_folder_reproduces_training_val_accuracy(cli, run, image_folder, tmp_path):
    """--split val re-makes the run's own validation split: the accuracy is the one training reported."""
    result = cli(["evaluate", image_folder, "--model", run, "--split", "val", "--output", tmp_path / "ev", "-q"])
    assert result.exit_code == 0, result.output
    m = _metrics(tmp_path / "ev")
    trained = json.loads((run / "metrics.json").read_text())
    assert m["split"] == "val" and m["n_images"] == trained["n_val"]
    assert m["accuracy"] == pytest.approx(trained["val_accuracy"], abs=1e-6)


def test_split_layout_defaults_to_test_then_val(cli, run, tmp_path):
    data = tmp_path / "splits"
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        make_folder(data / split, per_class=2, seed=seed)
    out = tmp_path / "ev"
    assert cli(["evaluate", data, "--model", run, "-o", out, "-q"]).exit_code == 0
    assert _metrics(out)["split"] == "test"
    assert cli(["evaluate", data, "--model", run, "-o", out, "-q", "--split", "val"]).exit_code == 0
    m = _metrics(out)
    assert m["split"] == "val" and m["n_images"] == 6 and all("/val/" in p for p in _paths(out))
    shutil.rmtree(data / "test")
    assert cli(["evaluate", data, "--model", run, "-o", out, "-q"]).exit_code == 0
    assert _metrics(out)["split"] == "val"
    result = cli(["evaluate", data, "--model", run, "-o", out, "--split", "test"])
    assert result.exit_code == 2 and "no test/ folder" in result.stderr


def _paths(out: Path) -> list[str]:
    return [line.split(",")[0] for line in (out / "predictions.csv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("classes, message", [
    (("bright", "dark", "striped", "cats"), "classes the model does not know: cats"),
    (("bright", "dark"), "model classes with no images there: striped"),
])
def test_classes_that_do_not_match_the_model_are_an_error(cli, run, tmp_path, classes, message):
    data = make_folder(tmp_path / "data", per_class=1, classes=classes)
    result = cli(["evaluate", data, "--model", run, "-o", tmp_path / "ev"])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "ev").exists()


def test_unreadable_images_are_skipped_and_listed(cli, run, tmp_path):
    data = make_folder(tmp_path / "data", per_class=2)
    (data / "dark" / "broken.png").write_bytes(b"not a png")
    result = cli(["evaluate", data, "--model", run, "-o", tmp_path / "ev", "-q"])
    assert result.exit_code == 0, result.output
    m = _metrics(tmp_path / "ev")
    assert m["n_images"] == 6 and m["n_skipped"] == 1
    assert m["skipped"][0]["path"].endswith("broken.png") and "Pillow" in m["skipped"][0]["reason"]


@pytest.mark.parametrize("args, message", [
    (["--split", "nope"], "--split must be one of"),
    (["--split", "all", "--top-k", "0"], "--top-k must be at least 1"),
])
def test_bad_flags_are_exit_2(cli, run, image_folder, args, message):
    result = cli(["evaluate", image_folder, "--model", run, *args])
    assert result.exit_code == 2 and message in result.stderr


def test_missing_data_dir_and_model_are_exit_2(cli, run, tmp_path, image_folder):
    assert cli(["evaluate", tmp_path / "nothing", "--model", run]).exit_code == 2
    result = cli(["evaluate", image_folder, "--model", tmp_path / "nothing"])
    assert result.exit_code == 2 and result.stderr.startswith("Error:")


def test_tflite_and_savedmodel_evaluate_like_keras(cli, run, tmp_path):
    """The same images through each kind: same accuracy and (nearly) the same loss; each model's
    results go to its own folder under <run>/eval/ by default."""
    data = make_folder(tmp_path / "data", per_class=3, seed=3)
    tflite = make_export_folder(run, run / "export", convert_tflite(run))
    export_savedmodel(run, run / "export" / "saved_model")
    results = {}
    for model, out in ((run, run / "eval"), (tflite, run / "eval" / "model.tflite"),
                       (run / "export" / "saved_model", run / "eval" / "saved_model")):
        result = cli(["evaluate", data, "--model", model, "--json"])
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)
        assert Path(printed["out_dir"]) == out and _metrics(out)["accuracy"] == printed["accuracy"]
        results[printed["kind"]] = printed
    assert set(results) == {"keras", "tflite", "savedmodel"}
    for kind in ("tflite", "savedmodel"):
        assert results[kind]["accuracy"] == results["keras"]["accuracy"]
        assert results[kind]["confusion_matrix"] == results["keras"]["confusion_matrix"]
        assert results[kind]["loss"] == pytest.approx(results["keras"]["loss"], abs=1e-4)


def test_a_lone_tflite_evaluates_with_the_labels_of_its_metadata(cli, run, tmp_path):
    data = make_folder(tmp_path / "data", per_class=3, seed=3)
    lone = lone_tflite(run, tmp_path / "alone")
    keras_result = cli(["evaluate", data, "--model", run, "--json", "--split", "all", "-o", tmp_path / "ev_keras"])
    result = cli(["evaluate", data, "--model", lone, "--json", "--split", "all", "-o", tmp_path / "ev_lone"])
    assert result.exit_code == 0, result.output
    printed, expected = json.loads(result.stdout), json.loads(keras_result.stdout)
    assert printed["kind"] == "tflite" and printed["n_images"] == 9
    assert printed["accuracy"] == expected["accuracy"]
    assert printed["confusion_matrix"] == expected["confusion_matrix"]
    assert _metrics(tmp_path / "ev_lone")["per_class"].keys() == set(CLASSES)


@requires_onnx
def test_a_onnx_evaluates_like_keras_alone_and_beside_a_tflite(cli, run, tmp_path):
    """Alone, it names its classes from its metadata; in an export folder beside model.tflite,
    each writes its own default folder (they share a stem)."""
    data = make_folder(tmp_path / "data", per_class=3, seed=3)
    expected = json.loads(cli(["evaluate", data, "--model", run, "--json", "-o", tmp_path / "ev_keras"]).stdout)
    lone = lone_onnx(run, tmp_path / "alone")
    result = cli(["evaluate", data, "--model", lone, "--json", "-o", tmp_path / "ev_lone"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["kind"] == "onnx" and printed["n_images"] == 9
    assert printed["accuracy"] == expected["accuracy"]
    assert printed["confusion_matrix"] == expected["confusion_matrix"]
    assert printed["loss"] == pytest.approx(expected["loss"], abs=1e-4)
    assert _metrics(tmp_path / "ev_lone")["per_class"].keys() == set(CLASSES)

    tflite = make_export_folder(run, run / "export", convert_tflite(run))
    shutil.copy(lone, run / "export" / "model.onnx")
    for model in (tflite, run / "export" / "model.onnx"):
        result = cli(["evaluate", data, "--model", model, "--json"])
        assert result.exit_code == 0, result.output
    for kind, file in (("tflite", "model.tflite"), ("onnx", "model.onnx")):
        assert _metrics(run / "eval" / file)["kind"] == kind


def test_a_data_dir_in_a_bucket_evaluates_like_its_local_copy(cli, run, image_folder, tmp_path):
    """On TensorFlow's in-memory ram:// file system, as on gs://: whole, and with the run's own
    validation split re-made there."""
    from test_fs import copy_to_ram

    url = copy_to_ram(image_folder)
    for split in ("all", "val"):
        local = cli(["evaluate", image_folder, "--model", run, "--split", split, "--json", "-o", tmp_path / "l"])
        remote = cli(["evaluate", url, "--model", run, "--split", split, "--json", "-o", tmp_path / "r"])
        assert remote.exit_code == 0, remote.output
        got, expected = json.loads(remote.stdout), json.loads(local.stdout)
        assert got["data_dir"] == url and got["n_images"] == expected["n_images"] == (24 if split == "all" else 6)
        for key in ("accuracy", "confusion_matrix", "n_skipped"):
            assert got[key] == expected[key], (split, key)
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
        paths = [row.split(",")[0] for row in (tmp_path / "r" / "predictions.csv").read_text().splitlines()[1:]]
        assert paths and all(p.startswith(url + "/") for p in paths), split


def test_a_tflite_evaluates_with_tta_and_calibration_without_importing_tensorflow(cli, run, tmp_path):
    """In a fresh process: flip+crops TTA, ECE and reliability.png on a .tflite, with no TensorFlow;
    the same figures as the Keras model's with the same TTA."""
    data = make_folder(tmp_path / "data", per_class=3, seed=5)
    keras_result = cli(["evaluate", data, "--model", run, "--json", "-o", tmp_path / "ev_keras", "--tta", "flip+crops"])
    expected = json.loads(keras_result.stdout)
    lone = lone_tflite(run, tmp_path / "alone")
    script = textwrap.dedent("""
        import json, sys
        from tlcli.cli import app
        try:
            app(["evaluate", sys.argv[1], "--model", sys.argv[2], "-o", sys.argv[3], "--tta", "flip+crops", "-q"])
        except SystemExit as exit:
            code = exit.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        sys.stderr.write("REPORT " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(data), str(lone), str(tmp_path / "ev_lite")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert json.loads(proc.stderr.split("REPORT ", 1)[1]) == {"code": 0, "heavy": []}, proc.stderr
    got = _metrics(tmp_path / "ev_lite")
    assert got["tta"] == {**expected["tta"], "without": pytest.approx(expected["tta"]["without"], abs=1e-4)}
    assert got["tta"]["views"] == 7 and got["accuracy"] == expected["accuracy"]
    assert got["calibration"]["ece"] == pytest.approx(expected["calibration"]["ece"], abs=1e-4)
    assert (tmp_path / "ev_lite" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


@requires_flowers
@pytest.mark.slow
def test_flowers_val_accuracy_matches_the_run(cli, tmp_path):
    """Acceptance: evaluate on flowers-dev/val gives the val accuracy its training run reported.

    Uses a flowers run left in /tmp/flowruns by `tlcli train ../shared/data/flowers-dev
    --project /tmp/flowruns`; training one here would take minutes.
    """
    run = Path("/tmp/flowruns/train")
    if not (run / "metrics.json").is_file():
        pytest.skip("no flowers run in /tmp/flowruns")
    result = cli(["evaluate", FLOWERS, "--model", run, "-o", tmp_path / "ev", "-q"])
    assert result.exit_code == 0, result.output
    trained = json.loads((run / "metrics.json").read_text())
    m = _metrics(tmp_path / "ev")
    assert m["split"] == "val" and m["n_images"] == trained["n_val"]
    assert m["accuracy"] == pytest.approx(trained["val_accuracy"], abs=1e-6)
