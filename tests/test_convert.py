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
        "int8": ("tflite", 0.95), "saved_model": ("savedmodel", 0.98)}


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
