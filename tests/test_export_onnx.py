"""`tlcli export --onnx`: model.onnx is written, checked like every other file, and described in
model.json. (The converter and runner themselves are tests/test_onnx_format.py's.)"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest

from test_export import _export
from test_onnx_format import requires_onnx
from test_parity import validation_images
from tlcli.export import select_formats


def test_onnx_alone_writes_only_the_onnx_file():
    assert select_formats(onnx=True) == ["onnx"]
    assert select_formats(tflite=True, onnx=True) == ["float32", "onnx"]
    assert select_formats(quantize=["int8"], saved_model=True, onnx=True) == ["float32", "int8", "saved_model", "onnx"]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The shared tiny run exported as float32 .tflite and .onnx: (folder, --json dict)."""
    out = tmp_path_factory.mktemp("export_onnx") / "out"
    result = _export(["--model", trained_run, "--tflite", "--onnx", "--output", out, "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@requires_onnx
def test_model_onnx_is_a_row_of_the_check_with_the_agreement_measured_here(exported, trained_run):
    """The row's figures against onnxruntime and Keras run here, not through tlcli's runtime."""
    import onnxruntime

    from tlcli.model import load_classifier

    out, report = exported
    assert [a["format"] for a in report["artifacts"]] == ["float32", "onnx"] and report["passed"]
    row = report["artifacts"][1]
    assert row["file"] == "model.onnx" and row["min_agreement"] == 0.98 and row["passed"]
    val = validation_images(trained_run)
    reference = load_classifier(trained_run / "model.keras").predict(val.images.astype(np.float32), verbose=0)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"image": val.images.astype(np.float32)})[0]
    agreement = np.mean(probs.argmax(-1) == reference.argmax(-1))
    assert agreement >= 0.98 and row["agreement"] == pytest.approx(agreement)
    assert row["accuracy"] == pytest.approx(np.mean(probs.argmax(-1) == val.labels))
    assert row["max_prob_diff"] == pytest.approx(np.abs(probs - reference).max(), abs=1e-5) and row["max_prob_diff"] < 1e-4
    assert row["size_bytes"] == (out / "model.onnx").stat().st_size
    labels = (trained_run / "labels.txt").read_text().split()
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == labels


@requires_onnx
def test_model_json_lists_the_onnx_file_with_its_digest_and_shapes(exported, trained_run):
    out, _ = exported
    info = json.loads((out / "model.json").read_text())
    assert set(info["files"]) == {"model.tflite", "model.onnx"}
    entry = info["files"]["model.onnx"]
    data = (out / "model.onnx").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)
    assert (entry["input_name"], entry["input_dtype"], entry["input_shape"]) == ("image", "float32", [-1, 32, 32, 3])
    assert (entry["output_name"], entry["output_shape"]) == ("probabilities", [-1, 3])
    assert entry["input_range"] == [0, 255] and entry["output_range"] == [0, 1] and entry["metadata"] is True


@pytest.mark.parametrize("missing", ["tf2onnx", "onnx"])
def test_without_the_extra_export_onnx_stops_before_any_work(missing, trained_run, tmp_path, monkeypatch, cli):
    monkeypatch.setitem(sys.modules, missing, None)  # `import tf2onnx` now raises ImportError
    result = cli(["export", "--model", trained_run, "--onnx", "--output", tmp_path / "out"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == "Error: ONNX export needs the [onnx] extra: pip install 'tlcli[onnx]'"
    assert not (tmp_path / "out").exists()  # nothing loaded, converted or written
