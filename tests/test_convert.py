"""tlcli.convert: the formats table, conversion notes, and the refusal of augmentation layers.
(Every format converted from a real run is tests/test_export.py's.)"""

from __future__ import annotations

import numpy as np
import pytest

from tlcli.convert import FORMATS
from tlcli.errors import TlcliError


def test_formats_table_is_consistent():
    files = [f.file for f in FORMATS.values()]
    assert len(set(files)) == len(files)
    assert {name: (fmt.kind, fmt.min_agreement) for name, fmt in FORMATS.items()} == {
        "float32": ("tflite", 0.98), "float16": ("tflite", 0.98), "dynamic": ("tflite", 0.95),
        "int8": ("tflite", 0.95), "int8_io": ("tflite", 0.95), "saved_model": ("savedmodel", 0.98),
        "onnx": ("onnx", 0.98)}
    # --int8-io has a file of its own: it never overwrites the float-I/O int8 model.
    assert FORMATS["int8_io"].file == "model_int8_io.tflite" != FORMATS["int8"].file
    assert [n for n, f in FORMATS.items() if f.uint8_io] == ["int8_io"]


def test_assert_no_augmentation_rejects_random_layers():
    import keras

    from tlcli.convert import assert_no_augmentation

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.RandomFlip(name="flip")(inputs))
    with pytest.raises(TlcliError, match="flip"):
        assert_no_augmentation(model)


def test_a_partly_quantized_int8_model_is_reported(tmp_path):
    """The converter silently leaves ops without int8 kernels in float; convert says so."""
    import keras

    from tlcli.convert import convert_tflite, quantization_notes

    class Sin(keras.layers.Layer):  # TFLite's SIN has no int8 kernel
        def call(self, x):
            return keras.ops.sin(x)

    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = Sin()(keras.layers.Conv2D(4, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    path = tmp_path / "partial.tflite"
    path.write_bytes(convert_tflite(model, "int8", images)[0])
    (note,) = quantization_notes(path)
    assert "partly quantized" in note and "SIN" in note


def test_write_tflite_replaces_the_file_whole(tmp_path):
    from tlcli.convert import write_tflite

    path = tmp_path / "model.tflite"
    path.write_bytes(b"an older, longer model")
    write_tflite(path, b"TFL3 bytes")
    assert path.read_bytes() == b"TFL3 bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]  # no temporary file left


# ---------------------------------------------------------------- metadata in every .tflite


def _small_model():
    """A seeded conv net whose probabilities are far from 0 and 1, so any change in them shows."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _litert(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(outp["index"])[0].copy())
    return np.stack(rows)


@pytest.mark.parametrize("name", ["float32", "int8_io"])
def test_write_tflite_adds_metadata_and_leaves_the_outputs_alone(tmp_path, name):
    from tlcli import __version__
    from tlcli.convert import ModelInfo, convert_tflite, write_tflite
    from tlcli.tflite_metadata import read_labels, read_metadata

    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    data, _ = convert_tflite(_small_model(), name, images)
    plain, tagged = tmp_path / "plain.tflite", tmp_path / "tagged.tflite"
    write_tflite(plain, data)
    write_tflite(tagged, data, ModelInfo(("cat", "dog", "fox"), "tiny", "train3"))

    assert plain.read_bytes() == data and read_metadata(plain) is None
    assert read_labels(tagged) == ["cat", "dog", "fox"]
    meta = read_metadata(tagged)
    assert (meta["name"], meta["version"]) == ("tlcli tiny classifier", "train3")
    assert "3 classes (cat, dog, fox)" in meta["description"] and "8x8" in meta["description"]
    assert f"tlcli {__version__}" in meta["description"] and "0-255" in meta["description"]
    assert (meta["input"]["mean"], meta["input"]["std"], meta["input"]["color_space"]) == ([0.0], [1.0], "RGB")
    outputs = _litert(plain, images)
    assert outputs.std() > 0.01  # varied outputs: a change would show
    np.testing.assert_array_equal(_litert(tagged, images), outputs)


def test_metadata_version_is_tlcli_s_without_a_run(tmp_path):
    from tlcli import __version__
    from tlcli.convert import ModelInfo, convert_tflite, write_tflite
    from tlcli.tflite_metadata import read_metadata

    path = tmp_path / "m.tflite"
    write_tflite(path, convert_tflite(_small_model(), "float32")[0], ModelInfo(("a", "b", "c")))
    meta = read_metadata(path)
    assert (meta["name"], meta["version"]) == ("tlcli unknown classifier", f"tlcli {__version__}")


def test_labels_that_do_not_fit_are_a_tlcli_error(tmp_path):
    from tlcli.convert import ModelInfo, convert_tflite, write_tflite

    data = convert_tflite(_small_model(), "float32")[0]
    with pytest.raises(TlcliError, match="metadata: .*3 classes, but 2 labels"):
        write_tflite(tmp_path / "m.tflite", data, ModelInfo(("a", "b")))
    assert not list(tmp_path.iterdir())  # nothing written
