"""`tlcli export`: every format converts, runs and is checked against the Keras model for real."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_folder
from test_parity import broken_copy, validation_images
from tlcli.convert import FORMATS
from tlcli.errors import TlcliError
from tlcli.export import select_formats


def _export(args):
    from tlcli.cli import app

    return CliRunner().invoke(app, ["export", *map(str, args)], catch_exceptions=False)


TFLITE_FORMATS = ("float32", "float16", "dynamic", "int8", "int8_io")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """Every format of the shared tiny run, checked on its validation split: (folder, --json dict)."""
    out = tmp_path_factory.mktemp("export") / "all"
    result = _export(["--model", trained_run, "--quantize", "all", "--int8-io", "--saved-model", "--output", out,
                      "--json"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["passed"] else 1)
    return out, report


@pytest.fixture(scope="module")
def keras_model(trained_run):
    from tlcli.model import load_classifier

    return load_classifier(trained_run / "model.keras")


@pytest.fixture(scope="module")
def val_split(trained_run):
    return validation_images(trained_run)


def _plain_interpreter(path):
    """An interpreter made here, not by tlcli: the tests' own reference runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite.python.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


def _plain_run(path, images: np.ndarray) -> np.ndarray:
    """Probabilities of a float-in, float-out .tflite (or uint8-in, uint8-out with pixels as they
    are), one image per call, without tlcli's code."""
    interpreter = _plain_interpreter(path)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    if inp["dtype"] == np.uint8:
        assert inp["quantization"] == (1.0, 0) and outp["dtype"] == np.uint8
    else:
        assert inp["dtype"] == np.float32 and outp["dtype"] == np.float32
    out = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        out.append(interpreter.get_tensor(outp["index"])[0].astype(np.float32))
    if outp["dtype"] == np.uint8:
        scale, zero_point = outp["quantization"]
        return (np.stack(out) - zero_point) * scale
    return np.stack(out)


def _tlcli_run(path, images: np.ndarray) -> np.ndarray:
    """Probabilities of an exported file as tlcli runs it (labels and size from its folder)."""
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model, run_batches

    return run_batches(open_model(resolve_model(path)), images)


# ---------------------------------------------------------------- flags


def test_select_formats_defaults_repeats_and_all():
    assert select_formats() == ["float32"]
    assert select_formats(saved_model=True) == ["saved_model"]
    assert select_formats(tflite=True, saved_model=True) == ["float32", "saved_model"]
    assert select_formats(quantize=["int8"]) == ["float32", "int8"]  # --quantize implies --tflite
    assert select_formats(quantize=["int8", "fp16", "int8"]) == ["float32", "float16", "int8"]
    assert select_formats(quantize=["dynamic,float16"]) == ["float32", "float16", "dynamic"]
    assert select_formats(quantize=["all"]) == ["float32", "float16", "dynamic", "int8"]
    # --int8-io has its own file, beside the float-I/O int8 one when both are asked for.
    assert select_formats(int8_io=True) == ["float32", "int8_io"]
    assert select_formats(quantize=["int8"], int8_io=True) == ["float32", "int8", "int8_io"]
    assert "int8_io" not in select_formats(quantize=["all"])
    with pytest.raises(TlcliError) as error:
        select_formats(quantize=["int4"])
    assert error.value.exit_code == 2 and "int8" in str(error.value)


def test_export_takes_keywords_only():
    from tlcli.export import export

    with pytest.raises(TypeError, match="positional"):
        export("runs")


def test_bad_quantize_value_is_a_one_line_error(cli):
    result = cli(["export", "--quantize", "int4"])
    assert result.exit_code == 2
    assert "unknown --quantize precision 'int4'" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- every format


def test_every_format_is_written_with_labels_and_model_json(exported):
    out, report = exported
    for name in (*TFLITE_FORMATS, "saved_model"):
        assert (out / FORMATS[name].file).exists(), name
    assert (out / "model_int8.tflite").is_file() and (out / "model_int8_io.tflite").is_file()  # side by side
    assert (out / "saved_model" / "saved_model.pb").is_file()
    assert (out / "labels.txt").read_text().split() == ["bright", "dark", "striped"]
    assert [a["format"] for a in report["artifacts"]] == [*TFLITE_FORMATS, "saved_model"]
    assert not [a["notes"] for a in report["artifacts"] if a["notes"]]  # each is quantized as its name says
    # Nothing temporary is left behind by the atomic writes.
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_model_json_says_how_to_feed_the_model(exported, trained_run):
    out, _ = exported
    info = json.loads((out / "model.json").read_text())
    assert info["input_size"] == 32 and info["input_shape"] == [1, 32, 32, 3]
    assert info["input_range"] == [0, 255] and info["input_color"] == "RGB"
    assert info["labels"] == (trained_run / "labels.txt").read_text().split()
    assert info["backbone"] == "tiny"
    from tlcli import __version__

    assert info["tlcli_version"] == __version__
    assert set(info["files"]) == {"model.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite",
                                  "model_int8_io.tflite", "saved_model"}
    assert info["files"]["model_int8.tflite"]["input_dtype"] == "float32"  # float I/O unless --int8-io
    assert info["files"]["model_int8_io.tflite"]["input_dtype"] == "uint8"
    assert info["files"]["saved_model"]["signature"] == "serving_default"
    for name in TFLITE_FORMATS:  # what the file itself holds, checked here without tlcli's code
        entry, data = info["files"][FORMATS[name].file], (out / FORMATS[name].file).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data), name
        assert entry["metadata"] is True and entry["input_shape"] == [1, 32, 32, 3], name
        assert entry["input_range"] == [0, 255] and entry["output_shape"] == [1, 3], name


def test_every_tflite_carries_metadata_with_the_labels(exported, trained_run):
    """Read back with the schema's own generated code (LiteRT's), not tlcli's reader."""
    import zipfile

    from ai_edge_litert import schema_py_generated as schema

    from tlcli import __version__

    out, _ = exported
    labels = (trained_run / "labels.txt").read_bytes()
    for name in TFLITE_FORMATS:
        data = (out / FORMATS[name].file).read_bytes()
        model = schema.Model.GetRootAs(data, 0)
        names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
        assert b"TFLITE_METADATA" in names, name
        buffer = model.Buffers(model.Metadata(names.index(b"TFLITE_METADATA")).Buffer()).DataAsNumpy().tobytes()
        assert buffer[4:8] == b"M001", name
        for text in (b"tlcli tiny classifier", trained_run.name.encode(), b"32x32", __version__.encode()):
            assert text in buffer, (name, text)
        with zipfile.ZipFile(out / FORMATS[name].file) as archive:
            assert archive.read("labels.txt") == labels, name


def test_every_artifact_agrees_with_keras_and_the_report_says_so(exported, keras_model, val_split):
    """The report's figures against ones computed here: Keras's own predict, and each file run on
    an interpreter (or the SavedModel loaded) by the test, not by tlcli's checking code."""
    import tensorflow as tf

    out, report = exported
    reference = keras_model.predict(val_split.images.astype(np.float32), verbose=0)
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    rows = {row["format"]: row for row in report["artifacts"]}
    for name, row in rows.items():
        if name == "saved_model":
            probs = serve(image=tf.constant(val_split.images.astype(np.float32)))["probabilities"].numpy()
        else:
            probs = _plain_run(out / row["file"], val_split.images)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=0.02)  # int8 softmax: steps of 1/256
        assert row["agreement"] == pytest.approx(np.mean(probs.argmax(-1) == reference.argmax(-1))), name
        assert row["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == val_split.labels)), name
        assert row["max_prob_diff"] == pytest.approx(np.abs(probs - reference).max(), abs=1e-5), name
        files = [p for p in (out / row["file"]).rglob("*") if p.is_file()] or [out / row["file"]]
        assert row["size_bytes"] == sum(p.stat().st_size for p in files), name
    # Float formats are the Keras model to rounding; int8 is close.
    assert rows["float32"]["agreement"] == 1.0 and rows["float32"]["max_prob_diff"] < 1e-4
    assert rows["saved_model"]["agreement"] == 1.0 and rows["saved_model"]["max_prob_diff"] < 1e-4
    assert rows["float16"]["max_prob_diff"] < 0.01
    assert rows["int8"]["max_prob_diff"] < 0.1
    assert rows["int8"]["size_bytes"] < rows["float32"]["size_bytes"] * 0.5
    assert report["reference"]["accuracy"] == pytest.approx(np.mean(reference.argmax(-1) == val_split.labels))
    assert report["n_check_images"] == len(val_split) == 6


def test_int8_model_tensors_really_are_int8(exported):
    from tlcli.convert import tensor_dtypes

    out, _ = exported
    inside = tensor_dtypes(out / "model_int8.tflite", include_io=False)
    assert inside["int8"] > 10
    assert not [d for d in inside if d.startswith("float")], inside  # nothing left in float
    assert set(inside) <= {"int8", "int32"}  # int32: biases
    everything = tensor_dtypes(out / "model_int8.tflite")
    assert everything["float32"] == 2  # the float input and output, quantized inside
    # The float models are float.
    assert "int8" not in tensor_dtypes(out / "model.tflite")
    assert tensor_dtypes(out / "model_fp16.tflite")["float16"] > 0
    assert tensor_dtypes(out / "model_dynamic.tflite")["int8"] > 0


def test_int8_io_has_uint8_tensors_mapping_pixels_as_they_are(exported, val_split):
    from tlcli.convert import tensor_dtypes

    out, _ = exported
    interpreter = _plain_interpreter(out / "model_int8_io.tflite")
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.uint8 and outp["dtype"] == np.uint8
    assert inp["quantization"] == (1.0, 0)  # byte 0..255 is pixel 0..255: feed camera bytes as is
    assert list(inp["shape"]) == [1, 32, 32, 3]
    assert not [d for d in tensor_dtypes(out / "model_int8_io.tflite") if d.startswith("float")]
    entry = json.loads((out / "model.json").read_text())["files"]["model_int8_io.tflite"]
    assert entry["input_dtype"] == "uint8" and entry["input_quantization"] == {"scale": 1.0, "zero_point": 0}
    # Same quantized network as the float-I/O int8 model beside it, so the same answers.
    float_io = _tlcli_run(out / "model_int8.tflite", val_split.images)
    uint8_io = _tlcli_run(out / "model_int8_io.tflite", val_split.images)
    assert np.abs(float_io - uint8_io).max() < 0.02


def test_no_augmentation_in_the_exports_and_preprocessing_inside(exported, keras_model, val_split):
    from tlcli.convert import assert_no_augmentation

    assert_no_augmentation(keras_model)
    layer_types = {type(l).__name__ for l in keras_model.layers}
    assert "Preprocess" in layer_types and not [t for t in layer_types if t.startswith("Random")]
    out, _ = exported
    interpreter = _plain_interpreter(out / "model.tflite")
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not [op for op in ops if "RANDOM" in op or "MULTINOMIAL" in op], ops
    assert "RESIZE_BILINEAR" not in ops  # the same-size resize is left out
    # Raw 0..255 pixels in, Keras's probabilities out: preprocessing is in the file; and twice
    # the same input gives twice the same output (no random stage).
    probs = _tlcli_run(out / "model.tflite", val_split.images)
    np.testing.assert_allclose(probs, keras_model.predict(val_split.images.astype(np.float32), verbose=0), atol=1e-4)
    np.testing.assert_array_equal(probs, _tlcli_run(out / "model.tflite", val_split.images))


def test_saved_model_serves_raw_images_of_any_size(exported, keras_model):
    import tensorflow as tf

    out, _ = exported
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (2, 45, 37, 3)).astype(np.float32)
    probs = serve(image=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(probs, keras_model.predict(images, verbose=0), atol=1e-5)


# ---------------------------------------------------------------- the real client: MediaPipe Tasks


@pytest.fixture(scope="module")
def mediapipe_results(exported, image_folder, tmp_path_factory) -> tuple[np.ndarray, dict[str, dict]]:
    """(images, {format: result}): MediaPipe Tasks' ImageClassifier on every exported .tflite, in
    its own process (tests/mediapipe_client.py), on all 24 images of the run's folder decoded as
    tlcli decodes them (its 6 validation images alone are too few to tell 98% from 100%)."""
    import importlib.util
    import subprocess

    from tlcli.images import load_image

    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed: pip install -e '.[dev]'")
    out, _ = exported
    images = np.stack([load_image(p, 32) for p in sorted(image_folder.rglob("*")) if p.is_file()])
    pixels = tmp_path_factory.mktemp("mediapipe") / "images.npy"
    np.save(pixels, images)
    client = Path(__file__).with_name("mediapipe_client.py")
    proc = subprocess.run([sys.executable, str(client), str(pixels), *(str(out / FORMATS[n].file) for n in TFLITE_FORMATS)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return images, dict(zip(TFLITE_FORMATS, json.loads(proc.stdout.strip().splitlines()[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("name", TFLITE_FORMATS)
def test_mediapipe_image_classifier_loads_every_tflite_with_its_class_names(mediapipe_results, exported,
                                                                           trained_run, name):
    """As a phone app loads the file: no NormalizationOptions error, the labels as category names,
    and the answers `tlcli predict` gives (its runtime, on the same pixels)."""
    images, results = mediapipe_results
    out, _ = exported
    result = results[name]
    assert "error" not in result, result.get("error")
    assert result["names"] == (trained_run / "labels.txt").read_text().splitlines()
    scores, ours = np.array(result["scores"]), _tlcli_run(out / FORMATS[name].file, images)
    agreement = np.mean(scores.argmax(1) == ours.argmax(1))
    assert agreement >= FORMATS[name].min_agreement, (name, agreement)
    # Normalization exactly right (mean 0, std 1): the same probabilities, not merely the same top-1
    # (identical when measured; a quantized output may differ by a step of 1/256 on other kernels).
    assert np.abs(scores - ours).max() < (0.01 if FORMATS[name].full_integer else 1e-4), name


# ---------------------------------------------------------------- the check catches a broken file


def test_cli_exits_1_on_a_failed_check_and_keeps_the_file(trained_run, tmp_path, monkeypatch, cli):
    import tlcli.export

    real = tlcli.export.fixed_shape_model
    monkeypatch.setattr(tlcli.export, "fixed_shape_model", lambda model, size: real(broken_copy(
        trained_run / "model.keras"), size))
    result = cli(["export", "--model", trained_run, "--output", tmp_path / "out", "--quantize", "float16"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout
    assert "below --min-agreement" in result.stderr and "model.tflite" in result.stderr
    assert (tmp_path / "out" / "model.tflite").exists() and (tmp_path / "out" / "model_fp16.tflite").exists()


def test_min_agreement_flag_overrides_the_defaults(trained_run, tmp_path, cli):
    result = cli(["export", "--model", trained_run, "--output", tmp_path, "--json", "--min-agreement", "0.5"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["artifacts"]
    assert row["min_agreement"] == 0.5 and row["agreement"] == 1.0
    bad = cli(["export", "--model", trained_run, "--output", tmp_path, "--min-agreement", "1.5"])
    assert bad.exit_code == 2


# ---------------------------------------------------------------- data and defaults


def test_default_model_and_output_are_the_latest_run(trained_run, tmp_path, cli):
    project = tmp_path / "runs"
    shutil.copytree(trained_run.parent, project)
    result = cli(["export", "--project", project, "--quiet"])
    assert result.exit_code == 0, result.output
    run = project / (project / "latest").read_text().strip()
    assert (run / "export" / "model.tflite").is_file() and (run / "export" / "model.json").is_file()
    assert not (run / "export" / "model_int8.tflite").exists()
    # A second export into the same folder keeps model.json's entry for the first file.
    again = cli(["export", "--project", project, "--saved-model", "--quiet"])
    assert again.exit_code == 0, again.output
    info = json.loads((run / "export" / "model.json").read_text())
    assert set(info["files"]) == {"model.tflite", "saved_model"}


def test_check_and_calibration_data_flags(trained_run, tmp_path, cli):
    check = make_folder(tmp_path / "check", per_class=5, seed=3)
    calibration = make_folder(tmp_path / "calib" / "train", per_class=4, seed=4).parent
    result = cli(["export", "--model", trained_run, "--output", tmp_path / "out", "--quantize", "int8", "--json",
                  "--check-data", check, "--calibration-data", calibration, "--calibration-samples", "5",
                  "--min-agreement", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_check_images"] == 15 and report["check_data"] == str(check)
    assert report["n_calibration_images"] == 5


def test_check_data_in_train_val_layout_uses_val(trained_run, tmp_path, cli):
    root = tmp_path / "split"
    make_folder(root / "train", per_class=3, seed=5)
    make_folder(root / "val", per_class=2, seed=6)
    result = cli(["export", "--model", trained_run, "--output", tmp_path / "out", "--json", "--check-data", root])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_check_images"] == 6


def test_predict_and_evaluate_work_on_the_int8_export(exported, image_folder, tmp_path, cli):
    """Their labels and accuracy against the file run here on the training decode of each image."""
    from tlcli.data import load_image

    out, _ = exported
    classes = ["bright", "dark", "striped"]
    paths = sorted(p for p in image_folder.rglob("*") if p.is_file())
    probs = _plain_run(out / "model_int8.tflite", np.stack([load_image(p, 32) for p in paths]))
    expected = {p.name: classes[i] for p, i in zip(paths, probs.argmax(-1))}
    result = cli(["predict", image_folder / "dark", "--model", out / "model_int8.tflite", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 8 and {Path(r["path"]).name: r["label"] for r in rows} == {
        p.name: expected[p.name] for p in paths if p.parent.name == "dark"}
    result = cli(["evaluate", image_folder, "--model", out / "model_int8.tflite", "--json",
                  "--output", tmp_path / "eval"])
    assert result.exit_code == 0, result.output
    truth = [classes.index(p.parent.name) for p in paths]
    report = json.loads(result.stdout)
    assert report["n_images"] == 24
    assert report["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == truth))


def test_export_falls_back_to_tf_lite_without_litert(trained_run, tmp_path, monkeypatch, cli):
    """Where LiteRT has no wheels it is not installed: export checks its files on tf.lite instead."""
    from tlcli.runtime import tflite_interpreter

    for name in ("ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # `import ai_edge_litert` now raises ImportError
    out = tmp_path / "out"
    result = cli(["export", "--model", trained_run, "--tflite", "--output", out, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["artifacts"]
    assert row["format"] == "float32" and row["agreement"] == 1.0 and row["max_prob_diff"] < 1e-4
    entry = json.loads((out / "model.json").read_text())["files"]["model.tflite"]
    assert entry["input_shape"] == [1, 32, 32, 3] and entry["input_dtype"] == "float32"
    assert type(tflite_interpreter(out / "model.tflite")).__module__ == "tensorflow.lite.python.interpreter"


# ---------------------------------------------------------------- bad input: one line, exit code 2


def _one_line_error(result, *words, alone=True):
    """Exit code 2 and a one-line "Error: …" (the only output, unless progress bars came first)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error:") and sum(l.startswith("Error:") for l in lines) == 1, result.output
    assert len(lines) == 1 or not alone, result.output
    for word in words:
        assert word in lines[-1], lines[-1]


def test_no_run_in_project(tmp_path, cli):
    _one_line_error(cli(["export", "--project", tmp_path / "empty"]), "no finished run")


def test_run_without_a_model(trained_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "model.keras").unlink()
    _one_line_error(cli(["export", "--model", run, "--output", tmp_path / "out"]), "no model.keras")


def test_calibration_data_without_images(trained_run, tmp_path, cli):
    empty = tmp_path / "calib"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "notes.txt").write_text("not an image")
    _one_line_error(cli(["export", "--model", trained_run, "--quantize", "int8", "--calibration-data", empty,
                         "--output", tmp_path / "out"]), "--calibration-data", "no images")
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_unreadable_calibration_images(trained_run, tmp_path, cli):
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    _one_line_error(cli(["export", "--model", trained_run, "--quantize", "int8", "--calibration-data", folder,
                         "--output", tmp_path / "out"]), "--calibration-data", "can be read", alone=False)


def test_check_data_with_unknown_classes(trained_run, tmp_path, cli):
    check = make_folder(tmp_path / "check", per_class=1, classes=("bright", "purple"))
    _one_line_error(cli(["export", "--model", trained_run, "--check-data", check, "--output", tmp_path / "out"]),
                    "purple")


def test_a_tflite_model_cannot_be_exported(exported, tmp_path, cli):
    out, _ = exported
    _one_line_error(cli(["export", "--model", out / "model.tflite", "--output", tmp_path / "out"]), "Keras model")


def test_run_whose_data_folder_is_gone(trained_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "moved")
    (run / "config.json").write_text(json.dumps(config))
    _one_line_error(cli(["export", "--model", run, "--output", tmp_path / "out"]), "--check-data")


def test_labels_that_disagree_with_the_model_are_refused(cli, trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "labels.txt").write_text("bright\ndark\n")
    result = cli(["export", "--model", run, "--output", tmp_path / "out"])
    assert result.exit_code == 2 and "labels.txt" in result.output


# ---------------------------------------------------------------- a multi-label model


def test_a_multi_label_run_exports_sigmoid_outputs_and_its_thresholds(multilabel_run, tmp_path, cli):
    """The shapes run trained by `tlcli train` (conftest): exported, checked on its validation
    split by label set, and its .tflite alone still knows each label's threshold."""
    from tlcli.tflite_metadata import read_thresholds

    out = tmp_path / "export"
    result = _export(["--model", multilabel_run, "--tflite", "--output", out, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (row,) = report["artifacts"]
    assert report["multi_label"] and row["agreement"] == 1.0 and row["accuracy"] == report["reference"]["accuracy"]
    # The Keras row's accuracy is training's exact match on the same images, measured apart.
    assert report["reference"]["accuracy"] == pytest.approx(
        json.loads((multilabel_run / "metrics.json").read_text())["val_exact_match"])
    thresholds = json.loads((multilabel_run / "thresholds.json").read_text())["thresholds"]
    info = json.loads((out / "model.json").read_text())
    assert (info["multi_label"], info["thresholds"]) == (True, thresholds)
    assert info["output"].startswith("independent (sigmoid) probabilities")
    assert read_thresholds(out / "model.tflite") == thresholds
    # Alone, without model.json or labels.txt, the .tflite gives each image the Keras model's labels.
    lone = tmp_path / "lone" / "model.tflite"
    lone.parent.mkdir()
    shutil.copy(out / "model.tflite", lone)
    data = Path(json.loads((multilabel_run / "config.json").read_text())["data_dir"])
    images = str(data.parent / "images" / "shapes_0[0-1]?.png")  # 20 of them
    rows = [json.loads(cli(["predict", images, "--model", model, "-f", "json"]).stdout) for model in (lone, multilabel_run)]
    sets = [[[t["label"] for t in r["labels"]] for r in found] for found in rows]
    assert len(sets[0]) == 20 and sets[0] == sets[1]


def test_model_json_of_a_single_label_run_says_nothing_of_thresholds(exported):
    info = json.loads((exported[0] / "model.json").read_text())
    assert "multi_label" not in info and "thresholds" not in info
    assert info["output"] == "softmax probabilities, one per label, in labels order"
