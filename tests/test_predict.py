"""`tlcli predict`: path expansion, output formats, failures, and every model kind agreeing."""

from __future__ import annotations

import csv
import io
import json
import os
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

ROW_KEYS = {"path", "label", "confidence", "top_k", "error"}


# ---------------------------------------------------------------- model fixtures (never written into trained_run)


def _classifier(run: Path):
    from tlcli.model import load_classifier

    return load_classifier(run / "model.keras")


def _image_size(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["image_size"]


def make_export_folder(run: Path, folder: Path, content: bytes, name: str = "model.tflite") -> Path:
    """A folder laid out like `tlcli export`'s: the .tflite, labels.txt and model.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "labels.txt", folder / "labels.txt")
    size = _image_size(run)
    (folder / "model.json").write_text(json.dumps({"input_size": [size, size]}))
    (folder / name).write_bytes(content)
    return folder / name


def inference_model(run: Path, batch_size: int | None = None):
    """The run's classifier pinned to inference mode, with a fixed-size input as `tlcli export` makes.

    Calling a Keras model without `training=False` can put BatchNorm in training mode (a
    preprocessing layer's recorded `training=True` reaches it), so exporters must pin it.
    """
    import keras

    size = _image_size(run)
    inputs = keras.Input((size, size, 3), batch_size=batch_size, name="image")
    return keras.Model(inputs, _classifier(run)(inputs, training=False))


def convert_tflite(run: Path, int8_images: np.ndarray | None = None) -> bytes:
    """The run's model as .tflite: float with a free batch size, or full-integer with a batch of 1
    and uint8 input and output (as `tlcli export` writes model_int8.tflite)."""
    import tensorflow as tf

    model = inference_model(run, batch_size=None if int8_images is None else 1)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8_images is not None:
        def representative():
            for image in int8_images:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def export_savedmodel(run: Path, path: Path) -> Path:
    """A SavedModel through Keras 3's export API, in inference mode, with a dict output."""
    import keras
    import tensorflow as tf

    classifier = _classifier(run)
    archive = keras.export.ExportArchive()
    archive.track(classifier)
    archive.add_endpoint("serve", lambda image: {"probabilities": classifier(image, training=False)},
                         input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="image")])
    archive.write_out(str(path), verbose=False)
    return path


@pytest.fixture(scope="module")
def tflite_model(trained_run, tmp_path_factory) -> Path:
    return make_export_folder(trained_run, tmp_path_factory.mktemp("export"), convert_tflite(trained_run))


@pytest.fixture(scope="module")
def savedmodel_dir(trained_run, tmp_path_factory) -> Path:
    """A SavedModel of the run, with the run's labels and config beside it."""
    folder = tmp_path_factory.mktemp("sm_run")
    for name in ("labels.txt", "config.json"):
        shutil.copy(trained_run / name, folder / name)
    return export_savedmodel(trained_run, folder / "saved_model")


@pytest.fixture(scope="module")
def expected_label(trained_run):
    """label(path): the run's Keras model on the image as training decodes it, outside `predict`."""
    from tlcli.data import load_image

    model, size = _classifier(trained_run), _image_size(trained_run)
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
    batch = np.stack([load_image(p, _image_size(trained_run)) for p in paths]).astype(np.float32)
    # training=False: after `train` in this process, Keras would otherwise default to training mode.
    expected = np.asarray(_classifier(trained_run)(batch, training=False))
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


@pytest.mark.parametrize("args", [["--format", "xml"], ["--top-k", "0"], ["--batch-size", "0"]])
def test_bad_flags_are_exit_2(cli, trained_run, images, args):
    result = cli(["predict", images / "dark", "--model", trained_run, *args])
    assert result.exit_code == 2 and result.stderr.startswith("Error:")


def test_top_k_is_capped_at_the_number_of_classes(cli, trained_run, images):
    rows = _json(cli(["predict", images / "dark" / "dark_1.png", "--model", trained_run, "-f", "json", "--top-k", "10"]))
    assert len(rows[0]["top_k"]) == len(CLASSES)


# ---------------------------------------------------------------- model kinds


def _probs(ref_path, paths, batch_size=5):
    from tlcli.predict import classify, open_predictor
    from tlcli.rundir import resolve_model

    predictor = open_predictor(resolve_model(ref_path))
    probs, errors = classify(predictor, paths, batch_size=batch_size)
    assert errors == {}
    return probs


def test_keras_savedmodel_and_tflite_agree(trained_run, savedmodel_dir, tflite_model, image_folder):
    # batch_size 5 leaves a short last batch: the resize path of the interpreter runs too.
    paths = [str(p) for p in sorted(image_folder.rglob("*_[0-3].*"))]
    keras_probs = _probs(trained_run, paths)
    assert keras_probs.shape == (len(paths), len(CLASSES))
    np.testing.assert_allclose(_probs(savedmodel_dir, paths), keras_probs, atol=1e-5)
    np.testing.assert_allclose(_probs(tflite_model, paths), keras_probs, atol=1e-4)


def test_tflite_cli_json(cli, tflite_model, images, expected_label):
    result = cli(["predict", images / "bright", "--model", tflite_model, "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    rows = _json(result)
    assert len(rows) == 8 and all(set(r) == ROW_KEYS for r in rows)
    assert [r["label"] for r in rows] == [expected_label(r["path"]) for r in rows]


LITERT = ("ai_edge_litert", "ai_edge_litert.interpreter")


def test_tflite_runs_on_tf_lite_without_litert(trained_run, tflite_model, image_folder, monkeypatch):
    """Where LiteRT has no wheels it is not installed: TensorFlow's tf.lite interpreter runs the file."""
    from tlcli.predict import open_predictor
    from tlcli.rundir import resolve_model

    paths = [str(p) for p in sorted(image_folder.rglob("*_[0-3].*"))]
    keras_probs = _probs(trained_run, paths)
    for name in LITERT:
        monkeypatch.setitem(sys.modules, name, None)  # `import ai_edge_litert` now raises ImportError
    assert type(open_predictor(resolve_model(tflite_model)).interpreter).__module__ == \
        "tensorflow.lite.python.interpreter"
    np.testing.assert_allclose(_probs(tflite_model, paths), keras_probs, atol=1e-4)


def test_without_litert_or_tensorflow_a_tflite_is_a_one_line_error(cli, tflite_model, images, monkeypatch):
    for name in (*LITERT, "tensorflow.lite.python.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    result = cli(["predict", images / "dark" / "dark_0.jpg", "--model", tflite_model])
    assert result.exit_code == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error:") and "LiteRT" in line and "TensorFlow" in line


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")
def test_int8_tflite_with_uint8_input_and_output(trained_run, image_folder, tmp_path):
    """Full-integer models take quantized pixels and give quantized scores; both are mapped."""
    from tlcli.data import load_image

    paths = [str(p) for p in sorted(image_folder.rglob("*")) if p.is_file()]
    calibration = np.stack([load_image(p, _image_size(trained_run)) for p in paths])
    model = make_export_folder(trained_run, tmp_path, convert_tflite(trained_run, calibration), "model_int8.tflite")
    from tlcli.predict import tflite_interpreter

    details = tflite_interpreter(model).get_input_details()[0]
    assert details["dtype"] == np.uint8
    # Output quantization steps are 1/256: a probability comes back within a few steps.
    np.testing.assert_allclose(_probs(model, paths), _probs(trained_run, paths), atol=0.03)


def test_quantize_and_dequantize_use_scale_and_zero_point():
    from tlcli.predict import dequantize, quantize

    pixels = np.array([0, 1, 127, 255], np.uint8)
    as_int8 = quantize(pixels, {"dtype": np.int8, "quantization": (1.0, -128)})
    assert as_int8.dtype == np.int8 and as_int8.tolist() == [-128, -127, -1, 127]
    halved = quantize(pixels, {"dtype": np.uint8, "quantization": (2.0, 0)})
    assert halved.tolist() == [0, 0, 64, 128]  # round half to even, as TFLite does
    scores = dequantize(np.array([-128, 0, 127], np.int8), {"dtype": np.int8, "quantization": (1 / 256, -128)})
    assert scores.tolist() == pytest.approx([0.0, 0.5, 255 / 256])
    floats = quantize(pixels, {"dtype": np.float32, "quantization": (0.0, 0)})
    assert floats.dtype == np.float32 and floats.tolist() == [0, 1, 127, 255]


def test_labels_that_do_not_fit_the_model_are_exit_2(cli, tflite_model, images, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tflite_model.parent, folder)
    (folder / "labels.txt").write_text("only\ntwo\n")
    result = cli(["predict", images / "dark", "--model", folder / tflite_model.name])
    assert result.exit_code == 2 and "outputs 3 classes" in result.stderr


def test_tflite_prediction_never_imports_tensorflow(tflite_model, image_folder, expected_label):
    script = textwrap.dedent("""
        import json, sys
        from tlcli.cli import app
        try:
            app(["predict", sys.argv[1], "--model", sys.argv[2], "--format", "json", "-q"])
        except SystemExit as exit:
            code = exit.code
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        sys.stderr.write("REPORT " + json.dumps({"code": code, "heavy": heavy}) + "\\n")
    """)
    image = next(image_folder.glob("dark/*.jpg"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, str(image), str(tflite_model)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    report = json.loads(proc.stderr.split("REPORT ", 1)[1])
    assert report == {"code": 0, "heavy": []}
    assert json.loads(proc.stdout)[0]["label"] == expected_label(image)
    assert seconds < 5, f"predicting one image with a .tflite model took {seconds:.1f}s"
