"""model.json: each exported file described from the file itself, earlier entries kept while their
files exist. (model.json of a real export is checked in tests/test_export.py.)"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from test_onnx_format import requires_onnx
from test_parity import LABELS, brightness_model, hand_built_case
from tlcli.rundir import ModelRef


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    """The hand-built model as float32 (with tlcli's metadata) and as int8 with uint8 input and
    output (without)."""
    from tlcli.convert import ModelInfo, convert_tflite, write_tflite

    folder = tmp_path_factory.mktemp("files")
    images = hand_built_case()[0]
    model = brightness_model()
    files = {"float32": folder / "model.tflite", "int8": folder / "model_int8_io.tflite"}
    write_tflite(files["float32"], convert_tflite(model, "float32")[0], ModelInfo(tuple(LABELS)))
    write_tflite(files["int8"], convert_tflite(model, "int8_io", images)[0])
    return {name: path.read_bytes() for name, path in files.items()}


def _write(out, files: dict, labels=LABELS) -> dict:
    from tlcli.model_json import write_model_json

    ref = ModelRef("keras", out / "model.keras", list(labels), 8, None)
    return write_model_json(out, ref, {"backbone": "tiny"}, files)


def test_entries_come_from_the_files_and_earlier_ones_stay_while_their_files_do(tflite_files, tmp_path):
    for name, data in (("model.tflite", tflite_files["float32"]), ("model_int8_io.tflite", tflite_files["int8"])):
        (tmp_path / name).write_bytes(data)
    _write(tmp_path, {"float32": tmp_path / "model.tflite"})
    info = _write(tmp_path, {"int8_io": tmp_path / "model_int8_io.tflite"})
    assert info == json.loads((tmp_path / "model.json").read_text())
    assert (info["input_size"], info["input_shape"], info["labels"]) == (8, [1, 8, 8, 3], LABELS)
    float32, int8 = info["files"]["model.tflite"], info["files"]["model_int8_io.tflite"]
    assert float32 == {"format": "float32", "description": "TFLite, float32", "input_dtype": "float32",
                       "input_shape": [1, 8, 8, 3], "input_range": [0.0, 255.0], "output_dtype": "float32",
                       "output_shape": [1, 2], "output_range": [0.0, 1.0], "metadata": True,
                       "size_bytes": len(tflite_files["float32"]),
                       "sha256": hashlib.sha256(tflite_files["float32"]).hexdigest()}
    assert int8["input_dtype"] == "uint8" and int8["input_quantization"] == {"scale": 1.0, "zero_point": 0}
    assert int8["output_dtype"] == "uint8" and np.isclose(int8["output_quantization"]["scale"], 1 / 256)
    # Quantized tensors: the range in the tensor's own values, pixels 0..255 and probabilities 0..1.
    assert int8["input_range"] == [0, 255] and int8["output_range"] == [0, 255]
    assert int8["metadata"] is False and int8["sha256"] == hashlib.sha256(tflite_files["int8"]).hexdigest()

    (tmp_path / "model.tflite").unlink()  # gone: its entry goes too
    assert set(_write(tmp_path, {"int8_io": tmp_path / "model_int8_io.tflite"})["files"]) == {"model_int8_io.tflite"}
    (tmp_path / "model.tflite").write_bytes(tflite_files["float32"])
    other = _write(tmp_path, {"float32": tmp_path / "model.tflite"}, labels=["day", "night"])
    assert set(other["files"]) == {"model.tflite"}  # other labels: the earlier entries were another model's


def test_a_saved_model_folder_gets_one_digest_per_file(tmp_path):
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    entry = _write(tmp_path, {"saved_model": folder})["files"]["saved_model"]
    assert entry["sha256"] == {"saved_model.pb": hashlib.sha256(b"graph").hexdigest(),
                               "variables/variables.index": hashlib.sha256(b"index").hexdigest()}
    assert entry["size_bytes"] == 10 and entry["metadata"] is False
    assert (entry["input_range"], entry["output_range"]) == ([0.0, 255.0], [0.0, 1.0])


@requires_onnx
def test_an_onnx_file_is_described_from_its_session(tmp_path):
    from tlcli.onnx_format import convert_onnx

    convert_onnx(brightness_model(), tmp_path / "model.onnx", 8, LABELS)
    data = (tmp_path / "model.onnx").read_bytes()
    entry = _write(tmp_path, {"onnx": tmp_path / "model.onnx"})["files"]["model.onnx"]
    assert entry == {"format": "onnx", "description": "ONNX (onnxruntime), float32",
                     "input_name": "image", "input_dtype": "float32", "input_shape": [-1, 8, 8, 3],
                     "input_range": [0.0, 255.0], "output_name": "probabilities", "output_dtype": "float32",
                     "output_shape": [-1, 2], "output_range": [0.0, 1.0], "metadata": True,
                     "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
