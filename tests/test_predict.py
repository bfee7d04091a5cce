"""`tlcli predict`: path expansion, output formats, failures, and .tflite models through the command
(each model kind agreeing with the others is tests/test_runtime.py's)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES
from test_onnx_format import requires_onnx
from test_runtime import classifier_of, convert_tflite, image_size_of, lone_onnx, lone_tflite, make_export_folder

ROW_KEYS = {"path", "label", "confidence", "top_k", "error"}


@pytest.fixture(scope="module")
def tflite_model(trained_run, tmp_path_factory) -> Path:
    return make_export_folder(trained_run, tmp_path_factory.mktemp("export"), convert_tflite(trained_run))


@pytest.fixture(scope="module")
def expected_label(trained_run):
    """label(path): the run's Keras model on the image as training decodes it, outside `predict`."""
    from tlcli.data import load_image

    model, size = classifier_of(trained_run), image_size_of(trained_run)
    labels = (trained_run / "labels.txt").read_text().split()

    def label(path) -> str:
        # training=False: after `train` in this process, Keras would otherwise default to training mode.
        probs = np.asarray(model(load_image(path, size)[None].astype(np.float32), training=False))[0]
        return labels[int(probs.argmax())]

    return label


@pytest.fixture
def images(image_folder, tmp_path) -> Path:
    """A copy of the image folder with a nested subfolder, safe to add files to."""
    root = tmp_path / "imgs"
    shutil.copytree(image_folder, root)
    (root / "dark" / "nested").mkdir()
    shutil.copy(root / "dark" / "dark_0.jpg", root / "dark" / "nested" / "deep.jpg")
    return root


def _json(result) -> list[dict]:
    return json.loads(result.stdout)


# ---------------------------------------------------------------- path expansion


def test_expand_paths_mixes_files_folders_and_globs(images):
    from tlcli.predict import expand_paths

    (images / "notes.txt").write_text("not an image")
    rows = expand_paths([
        str(images / "bright" / "bright_0.jpg"),
        str(images / "dark"),  # recursive: 8 + the nested one
        str(images / "striped" / "*_1.png"),
        str(images / "bright" / "bright_0.jpg"),  # duplicate: kept once, first position
        str(images / "missing.jpg"),
        str(images / "*.webp"),
        str(images / "notes.txt"),  # named explicitly: tried, whatever its extension
        str(images / "*.txt"),  # a glob only picks image files
    ])
    paths = [Path(p).name for p, problem in rows if problem is None]
    assert paths[0] == "bright_0.jpg"
    assert paths[1:10] == [f"dark_{i}{'.png' if i % 2 else '.jpg'}" for i in range(8)] + ["deep.jpg"]
    assert paths[10:] == ["striped_1.png", "notes.txt"]
    problems = {Path(p).name: problem for p, problem in rows if problem}
    assert problems == {"missing.jpg": "file not found", "*.webp": "no image file matches this pattern",
                        "*.txt": "no image file matches this pattern"}


def test_expand_paths_reports_an_empty_folder(tmp_path):
    from tlcli.predict import expand_paths

    (tmp_path / "empty").mkdir()
    assert expand_paths([str(tmp_path / "empty")]) == [(str(tmp_path / "empty"), "folder has no image files")]


# ---------------------------------------------------------------- the command


def test_predict_one_file_as_table(cli, trained_run, images, expected_label):
    result = cli(["predict", images / "dark" / "dark_0.jpg", "--model", trained_run])
    assert result.exit_code == 0, result.output
    cells = [line.split("│")[1:3] for line in result.stdout.splitlines() if line.startswith("│")]
    path = "".join(cell[0].strip() for cell in cells)  # long paths fold over several lines
    assert path == str(images / "dark" / "dark_0.jpg")
    assert cells[0][1].strip() == expected_label(images / "dark" / "dark_0.jpg")


def test_predict_folder_and_glob_json_shape(cli, trained_run, images, expected_label):
    result = cli(["predict", images / "bright", str(images / "striped" / "*.png"), "--model", trained_run,
                  "--format", "json", "--top-k", "2", "-q"])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert len(rows) == 8 + 4
    assert [Path(r["path"]).parent.name for r in rows] == ["bright"] * 8 + ["striped"] * 4
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["error"] is None and row["label"] == expected_label(row["path"])
        assert [set(t) for t in row["top_k"]] == [{"label", "confidence"}] * 2
        assert row["top_k"][0] == {"label": row["label"], "confidence": row["confidence"]}
        assert row["top_k"][0]["confidence"] >= row["top_k"][1]["confidence"]


def test_predict_matches_the_model_on_training_decoding(trained_run, images, cli):
    """The image is prepared exactly as in training: load_image at the run's size, then the model."""
    from tlcli.data import load_image

    paths = sorted((images / "striped").glob("*"))
    result = cli(["predict", images / "striped", "--model", trained_run, "-f", "json", "--top-k", "3", "-q"])
    rows = {Path(r["path"]).name: r for r in _json(result)}
    batch = np.stack([load_image(p, image_size_of(trained_run)) for p in paths]).astype(np.float32)
    # training=False: after `train` in this process, Keras would otherwise default to training mode.
    expected = np.asarray(classifier_of(trained_run)(batch, training=False))
    labels = (trained_run / "labels.txt").read_text().split()
    for path, probs in zip(paths, expected):
        got = {t["label"]: t["confidence"] for t in rows[path.name]["top_k"]}
        assert got == pytest.approx(dict(zip(labels, probs.tolist())), abs=1e-5)


def test_predict_csv_to_file(cli, trained_run, images, tmp_path):
    output = tmp_path / "out.csv"  # format from the extension
    result = cli(["predict", images / "dark", "--model", trained_run, "--output", output, "--top-k", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert list(rows[0]) == ["path", "label", "confidence", "top1_label", "top1_confidence",
                             "top2_label", "top2_confidence", "error"]
    assert len(rows) == 9
    assert all(r["label"] == r["top1_label"] and r["error"] == "" for r in rows)


def test_corrupt_file_gets_an_error_row_and_exit_1(cli, trained_run, images, expected_label):
    (images / "dark" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    Image.new("RGB", (50, 30), (10, 20, 30)).save(images / "dark" / "wide.png")
    result = cli(["predict", images / "dark", images / "nope.jpg", "--model", trained_run, "-f", "json", "-q"])
    assert result.exit_code == 1
    rows = {Path(r["path"]).name: r for r in _json(result)}
    assert len(rows) == 8 + 1 + 2 + 1  # dark, nested, the two new files, the missing one
    for name in ("broken.jpg", "nope.jpg"):
        assert rows[name]["label"] is None and rows[name]["confidence"] is None and rows[name]["top_k"] == []
    assert "Pillow" in rows["broken.jpg"]["error"] and rows["nope.jpg"]["error"] == "file not found"
    good = [r for name, r in rows.items() if name not in ("broken.jpg", "nope.jpg")]
    assert [(r["error"], r["label"]) for r in good] == [(None, expected_label(r["path"])) for r in good]


@pytest.mark.parametrize("model", ["missing_run", "notes.txt", "fake.tflite", "fake.keras"])
def test_missing_or_invalid_model_is_one_line_exit_2(cli, images, tmp_path, trained_run, model):
    (tmp_path / "notes.txt").write_text("hello")
    for fake in ("fake.tflite", "fake.keras"):  # with labels beside them, so only the model is wrong
        (tmp_path / fake).write_bytes(b"not a model at all")
    shutil.copy(trained_run / "labels.txt", tmp_path / "labels.txt")
    shutil.copy(trained_run / "config.json", tmp_path / "config.json")
    result = cli(["predict", images / "dark" / "dark_0.jpg", "--model", tmp_path / model])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error:") and "Traceback" not in result.output


def test_no_run_at_all_is_exit_2(cli, images, tmp_path):
    result = cli(["predict", images / "dark" / "dark_0.jpg", "--project", tmp_path / "runs"])
    assert result.exit_code == 2 and "no finished run" in result.stderr


@pytest.mark.parametrize("args", [["--format", "xml"], ["--top-k", "0"], ["--batch-size", "0"],
                                  ["--tta", "mirror"], ["--min-confidence", "1.5"], ["--min-confidence", "-0.1"]])
def test_bad_flags_are_exit_2(cli, trained_run, images, args):
    result = cli(["predict", images / "dark", "--model", trained_run, *args])
    assert result.exit_code == 2 and result.stderr.startswith("Error:")
    assert args[0] in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tta_flip_averages_the_model_on_the_image_and_its_mirror(cli, trained_run, images):
    """The probabilities are the mean of the Keras model's on each image and on its mirror, run here."""
    from tlcli.data import load_image

    paths = sorted((images / "striped").glob("*"))
    result = cli(["predict", images / "striped", "--model", trained_run, "-f", "json", "--top-k", "3", "--tta", "flip"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in _json(result)}
    batch = np.stack([load_image(p, image_size_of(trained_run)) for p in paths]).astype(np.float32)
    model = classifier_of(trained_run)
    expected = (np.asarray(model(batch, training=False)) + np.asarray(model(np.flip(batch, axis=2), training=False))) / 2
    labels = (trained_run / "labels.txt").read_text().split()
    for path, probs in zip(paths, expected):
        got = {t["label"]: t["confidence"] for t in rows[path.name]["top_k"]}
        assert got == pytest.approx(dict(zip(labels, probs.tolist())), abs=1e-5)


def test_below_min_confidence_the_label_is_unknown_and_the_top_k_stay(cli, trained_run, images, tmp_path):
    plain = _json(cli(["predict", images, "--model", trained_run, "-f", "json", "-q"]))
    confidences = sorted(r["confidence"] for r in plain)
    # Between two confidences near the median, far apart enough that rounding cannot cross it.
    low, high = next((a, b) for a, b in zip(confidences[len(confidences) // 3:], confidences[len(confidences) // 3 + 1:])
                     if b - a > 1e-4)
    threshold = (low + high) / 2
    result = cli(["predict", images, "--model", trained_run, "-f", "json", "-q", "--min-confidence", threshold])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert [r["label"] for r in rows] == ["unknown" if r["confidence"] < threshold else r["label"] for r in plain]
    assert 0 < sum(r["label"] == "unknown" for r in rows) < len(rows)
    assert [(r["confidence"], r["top_k"]) for r in rows] == [(r["confidence"], r["top_k"]) for r in plain]
    output = tmp_path / "out.csv"
    cli(["predict", images, "--model", trained_run, "-o", output, "-q", "--min-confidence", threshold])
    written = list(csv.DictReader(io.StringIO(output.read_text())))
    assert [(r["label"], r["top1_label"]) for r in written] == [(r["label"], r["top_k"][0]["label"]) for r in rows]


def test_min_confidence_is_a_strict_bound():
    from tlcli.predict import result_row

    probs = np.array([0.3, 0.6, 0.1])
    assert result_row("a.jpg", probs, ["x", "y", "z"], 2, min_confidence=0.6)["label"] == "y"
    row = result_row("a.jpg", probs, ["x", "y", "z"], 2, min_confidence=0.6000001)
    assert row["label"] == "unknown" and row["confidence"] == 0.6
    assert row["top_k"] == [{"label": "y", "confidence": 0.6}, {"label": "x", "confidence": 0.3}]
    assert result_row("a.jpg", probs, ["x", "y", "z"], 2)["label"] == "y"


def test_a_class_named_unknown_and_min_confidence_is_exit_2(cli, tflite_model, images, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tflite_model.parent, folder)
    (folder / "labels.txt").write_text("bright\nunknown\nstriped\n")
    result = cli(["predict", images / "dark", "--model", folder / tflite_model.name, "--min-confidence", "0.5"])
    assert result.exit_code == 2 and "class named 'unknown'" in result.stderr


def test_top_k_is_capped_at_the_number_of_classes(cli, trained_run, images):
    rows = _json(cli(["predict", images / "dark" / "dark_1.png", "--model", trained_run, "-f", "json", "--top-k", "10"]))
    assert len(rows[0]["top_k"]) == len(CLASSES)


# ---------------------------------------------------------------- .tflite models


def test_tflite_cli_json(cli, tflite_model, images, expected_label):
    result = cli(["predict", images / "bright", "--model", tflite_model, "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert len(rows) == 8 and all(set(r) == ROW_KEYS for r in rows)
    assert [r["label"] for r in rows] == [expected_label(r["path"]) for r in rows]


def test_without_litert_or_tensorflow_a_tflite_is_a_one_line_error(cli, tflite_model, images, monkeypatch):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tensorflow.lite.python.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    result = cli(["predict", images / "dark" / "dark_0.jpg", "--model", tflite_model])
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error:") and "LiteRT" in line and "TensorFlow" in line


def test_labels_that_do_not_fit_the_model_are_exit_2(cli, tflite_model, images, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tflite_model.parent, folder)
    (folder / "labels.txt").write_text("only\ntwo\n")
    result = cli(["predict", images / "dark", "--model", folder / tflite_model.name])
    assert result.exit_code == 2 and "outputs 3 classes" in result.stderr


@pytest.fixture(scope="module")
def lone_model(trained_run, tmp_path_factory) -> Path:
    """The run's .tflite with tlcli's metadata, alone in a fresh folder: no labels.txt, no model.json."""
    return lone_tflite(trained_run, tmp_path_factory.mktemp("lone"))


def test_a_lone_tflite_names_its_classes_from_its_metadata(cli, lone_model, images, expected_label):
    assert [p.name for p in lone_model.parent.iterdir()] == ["model.tflite"]
    result = cli(["predict", images / "striped", "--model", lone_model, "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert len(rows) == 8 and [r["label"] for r in rows] == [expected_label(r["path"]) for r in rows]


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory) -> Path:
    """The run's model as .onnx with its labels inside, alone in a fresh folder."""
    return lone_onnx(trained_run, tmp_path_factory.mktemp("lone_onnx"))


@pytest.mark.parametrize("model", ["export folder", "lone with metadata",
                                   pytest.param("lone onnx", marks=requires_onnx)])
def test_tflite_and_onnx_prediction_never_imports_tensorflow(request, image_folder, expected_label, model):
    """In a fresh process: the labels come from the file (or labels.txt) and TensorFlow stays out."""
    fixture = {"export folder": "tflite_model", "lone with metadata": "lone_model", "lone onnx": "onnx_model"}[model]
    model_path = request.getfixturevalue(fixture)
    script = textwrap.dedent("""
        import json, sys
        from tlcli.cli import app
        try:
            app(["predict", sys.argv[1], "--model", sys.argv[2], "--format", "json", "-q"])
        except SystemExit as exit:
            code = exit.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tf2onnx"))
        sys.stderr.write("REPORT " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
    """)
    image = next(image_folder.glob("dark/*.jpg"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, str(image), str(model_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    report = json.loads(proc.stderr.split("REPORT ", 1)[1])
    assert report == {"code": 0, "heavy": []}
    assert json.loads(proc.stdout)[0]["label"] == expected_label(image)
    assert seconds < 5, f"predicting one image with a {model_path.suffix} model took {seconds:.1f}s"


# ---------------------------------------------------------------- a multi-label model


def test_multi_label_rows_hold_every_label_above_its_threshold(cli, fixed_multilabel_run, image_folder):
    # Every image scores circle 0.8 (threshold 0.5), square 0.3 (0.25), triangle 0.55 (0.6).
    result = cli(["predict", image_folder / "dark", "--model", fixed_multilabel_run, "-f", "json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert len(rows) == 8 and all(set(r) == {"path", "labels", "top_k", "error"} for r in rows)
    assert rows[0]["labels"] == [{"label": "circle", "confidence": pytest.approx(0.8), "threshold": 0.5},
                                 {"label": "square", "confidence": pytest.approx(0.3), "threshold": 0.25}]
    # The top-k are the most probable labels, whether above their thresholds or not.
    assert [t["label"] for t in rows[0]["top_k"]] == ["circle", "triangle"]


def test_multi_label_min_confidence_raises_each_threshold_to_it(cli, fixed_multilabel_run, image_folder):
    result = cli(["predict", image_folder / "dark" / "dark_0.jpg", "--model", fixed_multilabel_run, "-f", "json",
                  "--min-confidence", "0.4"])
    (row,) = _json(result)
    assert row["labels"] == [{"label": "circle", "confidence": pytest.approx(0.8), "threshold": 0.5}]
    result = cli(["predict", image_folder / "dark" / "dark_0.jpg", "--model", fixed_multilabel_run, "-f", "json",
                  "--min-confidence", "0.9"])
    assert _json(result)[0]["labels"] == []


def test_multi_label_csv_and_table(cli, fixed_multilabel_run, image_folder, tmp_path):
    out = tmp_path / "p.csv"
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not an image")
    result = cli(["predict", image_folder / "dark" / "dark_0.jpg", unreadable, "--model", fixed_multilabel_run,
                  "-o", out, "--top-k", "1"])
    assert result.exit_code == 1  # the unreadable file
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["path", "labels", "confidences", "top1_label", "top1_confidence", "error"]
    assert (rows[0]["labels"], rows[0]["confidences"]) == ("circle;square", "0.8;0.3")
    assert rows[1]["labels"] == "" and rows[1]["error"]
    table = cli(["predict", image_folder / "dark" / "dark_0.jpg", "--model", fixed_multilabel_run,
                 "--min-confidence", "0.9"])
    assert "none above threshold" in table.stdout and "1 with none above threshold" in table.stdout


def test_multi_label_summary_counts_images_per_label(cli, fixed_multilabel_run, image_folder):
    result = cli(["predict", image_folder, "--model", fixed_multilabel_run])
    summary = result.stdout.split("First")[0]
    rows = [[cell.strip() for cell in re.split("[│┃]", line) if cell.strip()] for line in summary.splitlines()]
    assert ["predicted label", "images", "mean confidence"] in rows
    assert ["circle", "24", "0.800"] in rows and ["square", "24", "0.300"] in rows
    assert "triangle" not in summary  # in no image's labels
