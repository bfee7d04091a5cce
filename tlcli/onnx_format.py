"""ONNX: converting a tlcli classifier with tf2onnx, and running a `.onnx` file on onnxruntime.

The file takes what every tlcli export takes: raw RGB pixels (0-255) as float32, NHWC, at the
model's size, with a free batch size; the backbone's preprocessing is inside it. Its one output,
`probabilities`, has a score per class. The class names travel inside the file too, as the JSON
list `labels` in the model's metadata_props, which onnxruntime reads without the `onnx` package
(`session.get_modelmeta().custom_metadata_map`), so a lone `.onnx` still names its classes; a
multi-label model's thresholds travel the same way, as the JSON list `thresholds`.

Both sides are optional: they need the `[onnx]` extra (tf2onnx and onnx to convert, onnxruntime
to run). Running never imports TensorFlow, so `predict` on a `.onnx` starts as fast as on a
`.tflite`.

`OnnxRunner` is a `tlcli.runtime` runner (same attributes, same `predict`) that does not inherit
from `runtime.Runner`: runtime imports this module to list it in `RUNNERS`, and importing runtime
back would make a cycle. It imports nothing from runtime for that reason.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np

from tlcli.errors import TlcliError
from tlcli.progress import quiet_native_output
from tlcli.rundir import ModelRef, atomic_path, check_thresholds

INPUT, OUTPUT = "image", "probabilities"
LABELS_KEY = "labels"  # metadata_props key holding the class names as a JSON list
THRESHOLDS_KEY = "thresholds"  # a multi-label model's threshold per label, a JSON list
# Pinned so that the file does not change with tf2onnx's default (15 in tf2onnx 1.17);
# onnxruntime reads opset 15 since 1.10.
OPSET = 15
MISSING_EXTRA = "pip install 'tlcli[onnx]'"
_NUMPY_NAMES = {"float": "float32", "double": "float64"}  # onnxruntime's tensor type names that differ


def convert_onnx(classifier, path: str | Path, image_size: int, labels: list[str] | None = None,
                 thresholds: list[float] | None = None) -> None:
    """Write `classifier` (a tlcli Keras model) to `path` as ONNX, atomically.

    Input `image`: float32 (batch, image_size, image_size, 3) raw RGB; output `probabilities`.
    Traced at a fixed size, tlcli's Resize layer is the identity and leaves no ops behind.
    `labels` and a multi-label model's `thresholds`, if given, are stored in the file's metadata.
    """
    tf2onnx = require_converter()
    import tensorflow as tf

    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.float32, name=INPUT)
    # training=False: a plain call can run BatchNorm in training mode (the correctness issue).
    function = tf.function(lambda image: {OUTPUT: classifier(image, training=False)})
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its warnings (unsearchable resources, …) would land amid tlcli's output
    try:
        with quiet_native_output():
            proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=OPSET)
    except Exception as error:  # an op tf2onnx cannot map, …
        raise TlcliError(f"ONNX conversion failed: {_first_line(error)}") from None
    finally:
        logger.setLevel(level)
    # tf2onnx names the free batch dimension "unk__N"; apps see the name.
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    proto.doc_string = (f"tlcli image classifier: {INPUT} float32 (batch, {image_size}, {image_size}, 3), "
                        f"RGB 0-255 -> {OUTPUT} (batch, classes)")
    if labels is not None:
        proto.metadata_props.add(key=LABELS_KEY, value=json.dumps(list(labels), ensure_ascii=False))
    if thresholds is not None:
        proto.metadata_props.add(key=THRESHOLDS_KEY, value=json.dumps([float(t) for t in thresholds]))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(proto.SerializeToString())


def require_converter():
    """tf2onnx, or the one-line error saying how to install it (export asks before slow work)."""
    _import_extra("onnx", "ONNX export")  # asked by name: a tf2onnx imported earlier would not notice it gone
    return _import_extra("tf2onnx", "ONNX export")


def onnx_session(path: str | Path):
    """An onnxruntime session for the `.onnx` file at `path`, on the CPU, every core."""
    onnxruntime = _import_extra("onnxruntime", "running a .onnx model")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings go to stderr past Python
    try:
        with quiet_native_output():
            return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # InvalidProtobuf, NoSuchFile, Fail… (pybind classes, not exported)
        raise TlcliError(f"cannot load '{path}' as an ONNX model: {_first_line(error)}") from None


def _import_extra(name: str, task: str):
    """Module `name` of the [onnx] extra, or a one-line error saying how to install it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:  # it, or one of its own dependencies, is not installed
        raise TlcliError(f"{task} needs the [onnx] extra: {MISSING_EXTRA}") from None
    except ImportError as error:  # installed, but built for another NumPy (onnxruntime < 1.19 on NumPy 2), …
        why = f" ({_first_line(error)})" if str(error).strip() else ""  # onnxruntime's own says nothing
        raise TlcliError(f"{task} needs the [onnx] extra, and {name} fails to import{why}: "
                         "pip install --upgrade 'tlcli[onnx]'") from None


def read_labels(source) -> list[str] | None:
    """The class names stored in a `.onnx` file (a path or an onnxruntime session), or None."""
    labels = _metadata_list(source, LABELS_KEY)
    return labels if labels is not None and all(isinstance(l, str) for l in labels) else None


def read_thresholds(source) -> list | None:
    """A multi-label `.onnx` file's thresholds (a path or session), or None for a single-label one."""
    return _metadata_list(source, THRESHOLDS_KEY)


def _metadata_list(source, key: str) -> list | None:
    session = source if hasattr(source, "get_modelmeta") else onnx_session(source)
    text = session.get_modelmeta().custom_metadata_map.get(key)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def describe(source) -> dict:
    """A `.onnx` file (path or session) as model.json lists files: its input's and output's name,
    dtype and shape (-1 where free), and whether its metadata holds the labels."""
    session = source if hasattr(source, "get_inputs") else onnx_session(source)
    entry = {}
    for key, value in (("input", session.get_inputs()[0]), ("output", session.get_outputs()[0])):
        kind = value.type.removeprefix("tensor(").removesuffix(")")  # "tensor(float)": numpy's float32
        entry.update({f"{key}_name": value.name, f"{key}_dtype": _NUMPY_NAMES.get(kind, kind),
                      f"{key}_shape": [d if isinstance(d, int) else -1 for d in value.shape]})
    entry["metadata"] = read_labels(session) is not None
    return entry


_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(double)": np.float64,
           "tensor(float16)": np.float16}


class OnnxRunner:
    """A `.onnx` image classifier on onnxruntime's CPU provider, without TensorFlow: a
    `tlcli.runtime` runner, `predict(images)` mapping (n, size, size, 3) pixels to (n, classes).

    The input size comes from the model's input shape where it is fixed (else from `ref`);
    the labels from `ref`, or from the file's metadata when `ref` has none (a lone .onnx), and
    so do a multi-label model's thresholds.
    """

    kind = "onnx"
    uses_tensorflow = False

    def __init__(self, ref: ModelRef):
        self.ref, self.path = ref, Path(ref.path)
        self.labels, self.image_size = list(ref.labels), ref.image_size
        self.multi_label, self.thresholds = ref.multi_label, ref.thresholds
        self.session = onnx_session(self.path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise TlcliError(f"'{self.path}' has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1.")
        self._in, self._out = inputs[0], outputs[0]
        shape = self._in.shape
        if len(shape) != 4 or shape[-1] != 3:
            raise TlcliError(f"'{self.path}' takes input of shape {list(shape)}, not a batch of RGB (NHWC) images.")
        if self._in.type not in _DTYPES:
            raise TlcliError(f"'{self.path}' takes {self._in.type} input; tlcli feeds float or uint8 pixels.")
        self._dtype = _DTYPES[self._in.type]
        if not self.labels:
            self.labels = read_labels(self.session) or []
        if not self.labels:
            raise TlcliError(f"no labels.txt beside '{self.path}' and none in its metadata: cannot name the classes.")
        if self.thresholds is None and read_thresholds(self.session) is not None:
            self.thresholds = check_thresholds(read_thresholds(self.session), self.labels, self.path)
            self.multi_label = True
        classes = self._out.shape[-1] if self._out.shape else None
        if isinstance(classes, int) and classes != len(self.labels):
            raise TlcliError(f"'{self.path}' outputs {classes} classes but its labels list {len(self.labels)}: "
                             "the labels do not belong to this model.")
        # Dimensions are ints when fixed, names (or None) when free.
        self._fixed_size = isinstance(shape[1], int) and isinstance(shape[2], int)
        if self._fixed_size:
            if shape[1] != shape[2]:
                raise TlcliError(f"'{self.path}' takes {shape[1]}x{shape[2]} images; tlcli models are square.")
            self.image_size = int(shape[1])
        elif not self.image_size:
            raise TlcliError(f"'{self.path}' takes images of any size and nothing beside it says which: "
                             "put the export's model.json beside it.")
        self._batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def predict(self, images) -> np.ndarray:
        """Probabilities (n, classes) float32 for uint8 (or float) images (n, size, size, 3)."""
        images = np.asarray(images)
        if not len(images):
            return np.zeros((0, len(self.labels)), np.float32)
        if self._fixed_size and images.shape[1:3] != (self.image_size, self.image_size):
            raise TlcliError(f"'{self.path}' takes {self.image_size}x{self.image_size} images, "
                             f"not {images.shape[2]}x{images.shape[1]}.")
        x = images.astype(self._dtype)
        if self._batch is None:
            return self._run(x)
        # A batch size fixed by whoever exported the file: feed that many, the last chunk padded.
        out = []
        for start in range(0, len(x), self._batch):
            chunk = x[start:start + self._batch]
            padded = np.concatenate([chunk, np.zeros((self._batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out.append(self._run(padded)[:len(chunk)])
        return np.concatenate(out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._out.name], {self._in.name: x})[0].astype(np.float32)


def _first_line(error: Exception) -> str:
    """As runtime.first_line (not imported from there: see the module docstring)."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
