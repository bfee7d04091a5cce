"""Converting a tlcli classifier to deployable files: the formats, TFLite conversion and quantization,
and the SavedModel.

Every exported model takes raw RGB pixels (0-255): the backbone's preprocessing is inside it,
the training-only augmentation stage never is. Formats are one table, `FORMATS`; adding a
precision is one entry there. Converted .tflite bytes reach the disk only through `write_tflite`,
which gives every file the TFLite metadata (`tlcli.tflite_metadata`) that MediaPipe Tasks and
the TFLite Task Library need to load it: normalization, and the labels.

TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlcli.errors import TlcliError
from tlcli.progress import Step, quiet_native_output
from tlcli.rundir import atomic_path
from tlcli.runtime import first_line, tflite_interpreter


@dataclass(frozen=True)
class Format:
    """One export format: where it goes, how it is converted and how closely it must agree."""

    file: str  # file (or folder) name in the export folder
    kind: str  # how tlcli.runtime runs it: "tflite", "savedmodel" or "onnx"
    min_agreement: float  # default minimum top-1 agreement with the Keras model
    description: str
    optimize: bool = False  # converter.optimizations = [DEFAULT]
    supported_types: tuple[str, ...] = ()  # converter.target_spec.supported_types
    full_integer: bool = False  # int8 activations too: needs a representative dataset
    uint8_io: bool = False  # full integer with uint8 input and output tensors


FORMATS: dict[str, Format] = {
    "float32": Format("model.tflite", "tflite", 0.98, "TFLite, float32"),
    "float16": Format("model_fp16.tflite", "tflite", 0.98, "TFLite, float16 weights",
                      optimize=True, supported_types=("float16",)),
    # Dynamic range: int8 weights, float activations. Its weights are 8-bit, so it gets the
    # 8-bit tolerance.
    "dynamic": Format("model_dynamic.tflite", "tflite", 0.95, "TFLite, int8 weights (dynamic range)",
                      optimize=True),
    "int8": Format("model_int8.tflite", "tflite", 0.95, "TFLite, full integer int8",
                   optimize=True, full_integer=True),
    # The same network as int8, with uint8 input and output: camera bytes go in as they are.
    "int8_io": Format("model_int8_io.tflite", "tflite", 0.95, "TFLite, full integer int8, uint8 input and output",
                      optimize=True, full_integer=True, uint8_io=True),
    "saved_model": Format("saved_model", "savedmodel", 0.98, "SavedModel (TF Serving)"),
    "onnx": Format("model.onnx", "onnx", 0.98, "ONNX (onnxruntime), float32"),
}


def assert_no_augmentation(model) -> None:
    """Exported models must not contain the training-only augmentation stage (random layers)."""
    import keras

    def walk(m):
        for layer in m.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from walk(layer)

    random = [l.name for l in walk(model) if type(l).__name__.startswith("Random")]
    if random:
        raise TlcliError(f"the model contains augmentation layers ({', '.join(random)}); it cannot be exported.")


def fixed_shape_model(classifier, size: int):
    """The classifier with a fixed [1, size, size, 3] float32 input, in inference mode.

    A fixed shape makes a far better TFLite model than dynamic spatial dimensions. The leading
    Resizing layer would resize to the size the input already has, so it is left out (identity).
    """
    import keras

    inputs = keras.Input((size, size, 3), batch_size=1, name="image")
    body = classifier
    first = next((l for l in classifier.layers if not isinstance(l, keras.layers.InputLayer)), None)
    if isinstance(first, keras.layers.Resizing) and (first.height, first.width) == (size, size):
        body = keras.Model(first.output, classifier.output)
    return keras.Model(inputs, body(inputs, training=False), name=f"{classifier.name}_fixed")


def convert_tflite(model, name: str, calibration: np.ndarray | None = None, int8_io: bool = False,
                   step: Step | None = None) -> tuple[bytes, list[str]]:
    """Convert a fixed-shape model to TFLite bytes in format `name`; also returns notes.

    Full integer formats calibrate on `calibration` (uint8 images). With `int8_io` (or a format
    with `uint8_io`) their input and output tensors are uint8; the input maps 0..255 to pixel
    values 0..255 (scale 1, zero point 0), so an app feeds camera bytes as they are.
    """
    import tensorflow as tf

    fmt = FORMATS[name]
    int8_io = int8_io or fmt.uint8_io

    def make_converter():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if fmt.optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if fmt.supported_types:
            converter.target_spec.supported_types = [tf.as_dtype(t) for t in fmt.supported_types]
        if fmt.full_integer:
            if calibration is None or not len(calibration):
                raise TlcliError(f"{name} needs calibration images.")
            converter.representative_dataset = _representative(calibration, step)
            if int8_io:
                converter.inference_input_type = tf.uint8
                converter.inference_output_type = tf.uint8
        return converter

    notes = []
    converter = make_converter()
    if fmt.full_integer:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with quiet_native_output():
            return converter.convert(), notes
    except Exception as error:  # ConverterError and friends: an op with no int8 kernel, …
        if not fmt.full_integer:
            raise TlcliError(f"TFLite conversion ({name}) failed: {first_line(error)}") from None
        first = first_line(error)
    # Some ops have no int8 kernel: keep them in float rather than fail, and say so.
    converter = make_converter()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with quiet_native_output():
            data = converter.convert()
    except Exception as error:
        raise TlcliError(f"TFLite conversion ({name}) failed: {first_line(error)}") from None
    notes.append(f"not every op has an int8 kernel; some stay float ({first[:120]})")
    return data, notes


def _representative(images: np.ndarray, step: Step | None):
    """Calibration batches of one raw image each, as the model sees them (float 0..255).

    The first image gets one black and one white pixel so the input's calibrated range is
    exactly 0..255 (one pixel of 200 images moves no other range noticeably).
    """

    def generate():
        if step is not None and step.task is None:
            step.start(len(images))
        for i, image in enumerate(images):
            x = image[None].astype(np.float32)
            if i == 0:
                x[0, 0, 0, :], x[0, 0, -1, :] = 0.0, 255.0
            yield [x]
            if step is not None:
                step.advance()
        if step is not None:
            step.done(f"{len(images)} images")

    return generate


def quantization_notes(path: Path, name: str = "int8") -> list[str]:
    """Notes when a quantized model is not what its format promises, from its tensor types.

    The converter does not fail in these cases: it leaves ops without int8 kernels in float,
    and skips dynamic-range quantization of small weights, without a word.
    """
    fmt = FORMATS[name]
    interpreter = tflite_interpreter(path)
    tensors = _tensors(interpreter, include_io=False)
    dtypes = Counter(np.dtype(t["dtype"]).name for t in tensors)
    if fmt.full_integer:
        floats = {t["index"] for t in tensors if np.dtype(t["dtype"]).kind == "f"}
        if not floats:
            return []
        try:
            ops = sorted({op["op_name"] for op in interpreter._get_ops_details()
                          if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE")
                          and floats & {*op["inputs"], *op["outputs"]}})
        except Exception:  # a private interpreter API; the count alone still says it
            ops = []
        return [f"partly quantized: {len(floats)} tensors inside stay float"
                + (f" (ops without int8 kernels: {', '.join(ops)})" if ops else "")]
    for wanted in fmt.supported_types:
        if not dtypes[wanted]:
            return [f"no {wanted} weights: the file is not smaller than float32"]
    if fmt.optimize and not fmt.supported_types and not dtypes["int8"]:
        return ["no weights quantized (dynamic range skips tensors under 1024 values)"]
    return []


def tensor_dtypes(path, include_io: bool = True) -> Counter:
    """{dtype name: count} over the tensors of a .tflite model, per the interpreter."""
    return Counter(np.dtype(t["dtype"]).name for t in _tensors(tflite_interpreter(path), include_io))


def _tensors(interpreter, include_io: bool) -> list[dict]:
    io_indices = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    return [t for t in interpreter.get_tensor_details() if include_io or t["index"] not in io_indices]


@dataclass(frozen=True)
class ModelInfo:
    """What a .tflite file says about itself in its metadata: its classes and where it came from."""

    labels: tuple[str, ...]
    backbone: str = "unknown"
    run: str = ""  # the run's name, when the model comes from one
    thresholds: tuple[float, ...] | None = None  # a multi-label model's, one per label

    def metadata(self, size: int, dtype: str) -> dict:
        """Keyword arguments of `add_metadata` for a model of `size` px input of `dtype`."""
        from tlcli import __version__

        names = ", ".join(self.labels)
        if self.thresholds is None:
            task = f"Classifies an image as one of {len(self.labels)} classes ({names})."
            output = "softmax probabilities in label order."
        else:
            task = f"Tags an image with any of {len(self.labels)} labels ({names})."
            output = ("independent (sigmoid) probabilities in label order; a label applies at or above its "
                      "threshold (thresholds.json).")
        description = (f"{task} Input: raw RGB pixels 0-255 at {size}x{size}, {dtype}, no scaling (preprocessing "
                       f"is inside). Output: {output} Trained with tlcli {__version__}"
                       + (f", run {self.run}." if self.run else "."))
        # Float inputs take raw pixels, so mean 0 and std 1; a uint8 input's scale 1 and zero
        # point 0 say the same in its quantization, and the schema asks for the normalization anyway.
        return {"name": f"tlcli {self.backbone} classifier", "description": description,
                "version": self.run or f"tlcli {__version__}", "author": "tlcli", "mean": 0.0, "std": 1.0,
                **({"thresholds": list(self.thresholds)} if self.thresholds is not None else {})}


def write_tflite(path: Path, data: bytes, info: ModelInfo | None = None) -> None:
    """Write converted .tflite bytes to `path`, atomically: every exported .tflite is written here.

    With `info`, the file carries image-classifier metadata and the labels (see
    `tlcli.tflite_metadata`); the model itself is kept byte for byte, so its outputs do not change.
    """
    if info is not None:
        data = _with_metadata(data, info)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def _with_metadata(data: bytes, info: ModelInfo) -> bytes:
    from tlcli.tflite_metadata import add_metadata

    interpreter = tflite_interpreter(data, threads=1)
    (inp,) = interpreter.get_input_details()
    size, dtype = int(inp["shape"][1]), np.dtype(inp["dtype"]).name
    try:
        return add_metadata(data, list(info.labels), **info.metadata(size, dtype))
    except ValueError as error:
        raise TlcliError(f"cannot add TFLite metadata: {error}") from None


def write_saved_model(classifier, path: Path) -> None:
    """A SavedModel with a `serving_default` signature: `image` (any size, raw RGB) -> `probabilities`.

    Written to a temporary folder beside `path`, then renamed over it.
    """
    import keras
    import tensorflow as tf

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        archive = keras.export.ExportArchive()
        archive.track(classifier)
        archive.add_endpoint(
            "serve", lambda image: {"probabilities": classifier(image, training=False)},
            input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32, name="image")],
        )
        with quiet_native_output():
            archive.write_out(str(tmp), verbose=False)
        if path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
