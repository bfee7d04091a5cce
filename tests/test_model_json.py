"""model.json: each exported file described from the file itself, earlier entries kept while their
files exist. (model.json of a real export is checked in tests/test_export.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_parity import LABELS, brightness_model, hand_built_case
from tlcli.rundir import ModelRef


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    """The hand-built model as float32 and as int8 with uint8 input and output."""
    from tlcli.convert import convert_tflite

    folder = tmp_path_factory.mktemp("files")
    images = hand_built_case()[0]
    model = brightness_model()
    files = {"float32": folder / "model.tflite", "int8": folder / "model_int8.tflite"}
    files["float32"].write_bytes(convert_tflite(model, "float32")[0])
    files["int8"].write_bytes(convert_tflite(model, "int8", images, int8_io=True)[0])
    return {name: path.read_bytes() for name, path in files.items()}


def _write(out, files: dict, labels=LABELS) -> dict:
    from tlcli.model_json import write_model_json

    ref = ModelRef("keras", out / "model.keras", list(labels), 8, None)
    return write_model_json(out, ref, {"backbone": "tiny"}, files)


def test_entries_come_from_the_files_and_earlier_ones_stay_while_their_files_do(tflite_files, tmp_path):
    for name, data in (("model.tflite", tflite_files["float32"]), ("model_int8.tflite", tflite_files["int8"])):
        (tmp_path / name).write_bytes(data)
    _write(tmp_path, {"float32": tmp_path / "model.tflite"})
    info = _write(tmp_path, {"int8": tmp_path / "model_int8.tflite"})
    assert info == json.loads((tmp_path / "model.json").read_text())
    assert (info["input_size"], info["input_shape"], info["labels"]) == (8, [1, 8, 8, 3], LABELS)
    float32, int8 = info["files"]["model.tflite"], info["files"]["model_int8.tflite"]
    assert float32 == {"format": "float32", "description": "TFLite, float32", "input_dtype": "float32",
                       "input_shape": [1, 8, 8, 3], "output_dtype": "float32", "output_shape": [1, 2]}
    assert int8["input_dtype"] == "uint8" and int8["input_quantization"] == {"scale": 1.0, "zero_point": 0}
    assert int8["output_dtype"] == "uint8" and np.isclose(int8["output_quantization"]["scale"], 1 / 256)

    (tmp_path / "model.tflite").unlink()  # gone: its entry goes too
    assert set(_write(tmp_path, {"int8": tmp_path / "model_int8.tflite"})["files"]) == {"model_int8.tflite"}
    (tmp_path / "model.tflite").write_bytes(tflite_files["float32"])
    other = _write(tmp_path, {"float32": tmp_path / "model.tflite"}, labels=["day", "night"])
    assert set(other["files"]) == {"model.tflite"}  # other labels: the earlier entries were another model's
