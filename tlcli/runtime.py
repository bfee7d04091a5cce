"""Running a saved model of any kind: the one place where tlcli turns pixels into probabilities.

`predict`, `evaluate`, export's parity check and explain all open their models here, so the
figures export reports are measured on the very code `tlcli predict` runs. A `Runner` maps a
batch of uint8 RGB images (n, size, size, 3), decoded as in training, to class probabilities
(n, classes):

  keras       a tlcli `.keras` classifier, compiled once as a tf.function
  savedmodel  a SavedModel folder, through its serving_default signature
  tflite      a `.tflite` file on the LiteRT interpreter (TensorFlow's tf.lite copy where LiteRT
              has no wheels), quantized inputs and outputs mapped through (scale, zero_point)
  onnx        a `.onnx` file on onnxruntime (`tlcli.onnx_format.OnnxRunner`, the [onnx] extra)

Another kind is one more runner class and one entry in `RUNNERS`. `run_batches` and `latency`
run and time any runner; `with_tta` wraps any runner in test-time augmentation.

Nothing here imports TensorFlow at module level: the Keras and SavedModel runners import it when
built, a `.tflite` runs without it wherever LiteRT is installed, and a `.onnx` never needs it.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

from tlcli.config import LIMITS
from tlcli.errors import TlcliError
from tlcli.onnx_format import OnnxRunner  # onnxruntime loads only when a session opens
from tlcli.progress import quiet_native_output
from tlcli.rundir import ModelRef

LATENCY_SAMPLES = 32  # images timed one at a time by `latency`
TTA_MODES = LIMITS["tta"].choices  # flip, flip+crops
CROP_SCALE = 0.9  # flip+crops: each crop's side, as a fraction of the image's


class Runner:
    """A loaded model: `predict(images)` maps uint8 (n, size, size, 3) to probabilities (n, classes).

    `image_size` is the size to decode images at; `uses_tensorflow` tells callers whether
    TensorFlow is loaded anyway (and so may decode in tf.data). A `multi_label` model's
    probabilities are independent, and `thresholds` (one per label) say which labels apply.
    """

    kind = "?"
    uses_tensorflow = True

    def __init__(self, ref: ModelRef):
        self.ref = ref
        self.path = Path(ref.path)
        self.labels = list(ref.labels)
        self.image_size = ref.image_size
        self.multi_label, self.thresholds = ref.multi_label, ref.thresholds

    def predict(self, images) -> np.ndarray:
        """Probabilities (n, classes) float32 for uint8 images (n, size, size, 3)."""
        raise NotImplementedError

    def _check_outputs(self, n_outputs) -> None:
        if n_outputs is not None and int(n_outputs) != len(self.labels):
            raise TlcliError(
                f"'{self.path}' outputs {int(n_outputs)} classes but its labels.txt lists "
                f"{len(self.labels)}: the labels do not belong to this model."
            )


class KerasRunner(Runner):
    """A tlcli `.keras` model (raw RGB 0-255 in, softmax out), compiled once as a tf.function.

    `model` is the loaded Keras model, for the commands that need more than its predictions
    (export converts it, explain differentiates it).
    """

    kind = "keras"

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        import tensorflow as tf

        from tlcli.model import check_classifier, load_classifier

        model = load_classifier(self.path)
        check_classifier(model, self.labels, self.path, self.image_size)  # refused here, not by a TF traceback
        self.model = model
        spec = tf.TensorSpec((None, self.image_size, self.image_size, 3), tf.uint8)
        # One traced graph for every batch size: no retracing for the last, smaller batch.
        self._run = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), input_signature=[spec])

    def predict(self, images) -> np.ndarray:
        return self._run(images).numpy()


class SavedModelRunner(Runner):
    """A SavedModel folder (e.g. from Keras `model.export`), run through its serving_default signature."""

    kind = "savedmodel"

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        import tensorflow as tf

        try:
            with quiet_native_output():
                loaded = tf.saved_model.load(str(self.path))
        except Exception as error:  # TF raises OSError, ValueError, protobuf DecodeError…
            raise TlcliError(f"cannot load '{self.path}' as a SavedModel: {first_line(error)}") from None
        signature = getattr(loaded, "signatures", {}).get("serving_default")
        if signature is None:
            raise TlcliError(f"SavedModel '{self.path}' has no serving_default signature.")
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise TlcliError(f"SavedModel '{self.path}' takes {len(inputs)} inputs; an image classifier takes one.")
        (self._input, spec), = inputs.items()
        outputs = signature.structured_outputs
        if len(outputs) == 1:
            self._output = next(iter(outputs))
        else:  # e.g. probabilities and logits: take the one with a score per label
            self._output = next((k for k, v in outputs.items() if v.shape[-1] == len(self.labels)), None)
            if self._output is None:
                raise TlcliError(f"SavedModel '{self.path}' has outputs {', '.join(outputs)}; none has "
                                 f"one score per label ({len(self.labels)}).")
        self._check_outputs(outputs[self._output].shape[-1])
        self._loaded, self._signature, self._dtype, self._tf = loaded, signature, spec.dtype, tf

    def predict(self, images) -> np.ndarray:
        x = self._tf.cast(images, self._dtype)
        return self._signature(**{self._input: x})[self._output].numpy()


class TFLiteRunner(Runner):
    """A `.tflite` model on `tflite_interpreter`, with quantized (int8/uint8) inputs and outputs
    mapped through their (scale, zero_point); TensorFlow is not imported where LiteRT is installed.
    """

    kind = "tflite"
    uses_tensorflow = False

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        self.interpreter = tflite_interpreter(self.path)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise TlcliError(f"'{self.path}' has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1.")
        self._in, self._out = inputs[0], outputs[0]
        self._check_outputs(self._out["shape"][-1])
        signature = self._in.get("shape_signature", self._in["shape"])
        if len(signature) != 4 or signature[-1] != 3:
            raise TlcliError(f"'{self.path}' takes input of shape {list(signature)}, not a batch of RGB images.")
        # A fixed spatial size is what the model accepts; decode at it (normally it equals the run's size).
        self._fixed_size = signature[1] > 0 and signature[2] > 0
        if self._fixed_size:
            if signature[1] != signature[2]:
                raise TlcliError(f"'{self.path}' takes {signature[1]}x{signature[2]} images; tlcli models are square.")
            self.image_size = int(signature[1])
        elif not self.image_size:
            raise TlcliError(f"'{self.path}' takes images of any size and no model.json beside it says which: "
                             "put the export's model.json beside it.")
        self._batched = signature[0] == -1
        self._shape = None

    def predict(self, images) -> np.ndarray:
        images = np.asarray(images)
        if not len(images):
            return np.zeros((0, len(self.labels)), np.float32)
        if self._fixed_size and images.shape[1:3] != (self.image_size, self.image_size):
            raise TlcliError(f"'{self.path}' takes {self.image_size}x{self.image_size} images, "
                             f"not {images.shape[2]}x{images.shape[1]}.")
        if self._batched:
            return self._invoke(images)
        # A batch dimension fixed at 1 (as `tlcli export` writes them): one image per invocation.
        return np.concatenate([self._invoke(images[i:i + 1]) for i in range(len(images))])

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        """One call of the interpreter: the only place a .tflite model is run."""
        if images.shape != self._shape:
            self.interpreter.resize_tensor_input(self._in["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self._shape = images.shape
        self.interpreter.set_tensor(self._in["index"], quantize(images, self._in))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self._out["index"]), self._out)


# OnnxRunner has Runner's attributes and predict without subclassing it (that would be an import cycle).
RUNNERS: dict[str, type] = {"keras": KerasRunner, "savedmodel": SavedModelRunner, "tflite": TFLiteRunner,
                            "onnx": OnnxRunner}


def open_model(ref: ModelRef) -> Runner:
    """The Runner for `ref` (from `rundir.resolve_model`, or built by hand for a file whose kind
    is known); imports TensorFlow unless it is a .onnx, or a .tflite and LiteRT is installed."""
    if ref.kind not in RUNNERS:
        raise TlcliError(f"tlcli cannot run a {ref.kind} model: '{ref.path}'.")
    return RUNNERS[ref.kind](ref)


# ---------------------------------------------------------------- running and timing


def run_batches(runner: Runner, images: np.ndarray, batch_size: int = 32, progress=None) -> np.ndarray:
    """Probabilities for images already decoded to (n, size, size, 3) uint8, `batch_size` at a time.

    `progress(n)` is called after each batch.
    """
    out = []
    for start in range(0, len(images), batch_size):
        out.append(runner.predict(images[start:start + batch_size]))
        if progress:
            progress(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, len(runner.labels)), np.float32)


# ---------------------------------------------------------------- test-time augmentation


class TTARunner:
    """Any runner, its probabilities averaged over views of each image (`tta_views`).

    With `average=False`, `predict` gives every view's probabilities, (n, views, classes), the
    plain image's first: `evaluate` measures with and without TTA in one pass. Everything else
    (labels, image_size, kind, …) is the wrapped runner's.
    """

    def __init__(self, runner, mode: str, average: bool = True):
        LIMITS["tta"].check(mode)
        self.runner, self.mode, self.average = runner, mode, average

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def predict(self, images) -> np.ndarray:
        views = np.stack([self.runner.predict(view) for view in tta_views(images, self.mode)], axis=1)
        return views.mean(axis=1) if self.average else views


def with_tta(runner, mode: str | None):
    """`runner` averaging over the views of `mode` (flip, flip+crops), or `runner` itself for None."""
    return runner if mode is None else TTARunner(runner, mode)


def tta_views(images, mode: str) -> list[np.ndarray]:
    """The views `mode` averages over, each shaped and typed like `images` (n, size, size, 3): the
    images themselves, their horizontal mirror, and for flip+crops the four corner crops and the
    centre crop, CROP_SCALE of the side, resized back to the size."""
    images = np.asarray(images)  # tf.data hands over tensors
    views = [images, images[:, :, ::-1]]
    if mode == "flip+crops":
        height, width = images.shape[1:3]
        h, w = max(1, round(height * CROP_SCALE)), max(1, round(width * CROP_SCALE))
        corners = [(0, 0), (width - w, 0), (0, height - h), (width - w, height - h),
                   ((width - w) // 2, (height - h) // 2)]
        views += [np.stack([_resized(image[y:y + h, x:x + w], (width, height)) for image in images])
                  if len(images) else images for x, y in corners]
    return views


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image resized to `size` (width, height) with the decoder's filter (Pillow's bilinear,
    as tlcli.images resizes): uint8 as RGB, any other dtype channel by channel in float32."""
    from PIL import Image

    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BILINEAR))
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
        size, Image.BILINEAR)) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1).astype(image.dtype)


def latency(runner: Runner, images: np.ndarray, samples: int = LATENCY_SAMPLES) -> float:
    """Mean seconds per image when the first `samples` images are run one at a time, as an app
    runs a model, after one warm-up call; 0.0 for no images."""
    sample = np.asarray(images[:samples])
    if not len(sample):
        return 0.0
    runner.predict(sample[:1])
    start = time.perf_counter()
    for i in range(len(sample)):
        runner.predict(sample[i:i + 1])
    return (time.perf_counter() - start) / len(sample)


# ---------------------------------------------------------------- the TFLite interpreter


def tflite_interpreter(path, threads: int | None = None):
    """An allocated interpreter for the `.tflite` file at `path` (or .tflite bytes), on `threads`
    (default: every core).

    Every `.tflite` in tlcli (predict, evaluate, export's checks and notes) is opened here. LiteRT
    is preferred: it is a dependency wherever it has wheels, and it never imports TensorFlow.
    Elsewhere TensorFlow's own copy of the same interpreter runs the file.
    """
    interpreter_class = _interpreter_class()
    try:
        # quiet: the native "Created TensorFlow Lite XNNPACK delegate" line. tf.lite's copy warns
        # that it is deprecated in favour of LiteRT: tlcli uses it only where LiteRT is missing.
        with quiet_native_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = {"model_content": bytes(path)} if isinstance(path, (bytes, bytearray)) else {"model_path": str(path)}
            interpreter = interpreter_class(**source, num_threads=threads or os.cpu_count() or 1)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        where = "the converted model" if isinstance(path, (bytes, bytearray)) else f"'{path}'"
        raise TlcliError(f"cannot load {where} as a TFLite model: {first_line(error)}") from None
    return interpreter


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tensorflow.lite.python.interpreter import Interpreter

        return Interpreter
    except ImportError:
        raise TlcliError("running a .tflite model needs LiteRT or TensorFlow, and neither is installed: "
                         "pip install ai-edge-litert (or reinstall tlcli).") from None


def quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    """Pixels as the tensor described by `detail` (an interpreter's input details) takes them:
    cast for a float tensor, mapped through (scale, zero_point) and clipped for an integer one."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return images.astype(dtype)
    scale, zero_point = detail["quantization"]
    if not scale:  # an integer input with no scale takes the pixels as they are
        return images.astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(images.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor's values as float32: (value - zero_point) * scale for a quantized one."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def first_line(error: Exception) -> str:
    """The first line of an error's message (TensorFlow's run to pages), at most 200 characters."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
