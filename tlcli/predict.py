"""`tlcli predict`: from image paths to labelled rows, for any kind of saved model.

Every model kind is wrapped in a `Predictor` that maps a batch of uint8 images, decoded by
`tlcli.data.load_image` exactly as in training, to class probabilities; `evaluate` reuses it.

TensorFlow is imported only for Keras and SavedModel models. A `.tflite` model runs on the LiteRT
interpreter and never imports TensorFlow, so predicting one image with it starts in well under a
second: nothing in this module imports TensorFlow or Keras at module level. Where LiteRT has no
wheels (and so is not installed), `tflite_interpreter` falls back to TensorFlow's tf.lite copy.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tlcli.data import ImageError, find_images, is_image_file, load_image
from tlcli.errors import TlcliError
from tlcli.progress import quiet_native_output
from tlcli.rundir import ModelRef

FORMATS = ("table", "json", "csv")
_GLOB_CHARS = frozenset("*?[")


# ---------------------------------------------------------------- inputs


def expand_paths(args: list[str]) -> list[tuple[str, str | None]]:
    """(path, problem) for every image PATH names: files, folders (recursively) and globs, mixed.

    A named file is always tried, whatever its extension; folders and globs contribute image files
    only. An argument that names nothing gives one row with its problem, so it is reported in
    place instead of silently dropped. Duplicates keep their first position.
    """
    rows: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(path: str, problem: str | None = None) -> None:
        key = os.path.normpath(os.path.abspath(path)) if problem is None else f"\0{path}"
        if key not in seen:
            seen.add(key)
            rows.append((path, problem))

    for arg in args:
        arg = str(arg)
        if os.path.isdir(arg):
            images = find_images(Path(arg))
            for image in images:
                add(str(image))
            if not images:
                add(arg, "folder has no image files")
        elif os.path.exists(arg) or not _GLOB_CHARS & set(arg):
            add(arg, None if os.path.exists(arg) else "file not found")
        else:
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            found = 0
            for match in matches:
                if os.path.isdir(match):
                    for image in find_images(Path(match)):
                        add(str(image))
                        found += 1
                elif is_image_file(Path(match)):
                    add(match)
                    found += 1
            if not found:
                add(arg, "no image file matches this pattern")
    return rows


# ---------------------------------------------------------------- predictors


class Predictor:
    """A loaded model: `predict(images)` maps uint8 (n, size, size, 3) to probabilities (n, classes)."""

    kind = "?"
    uses_tensorflow = True

    def __init__(self, ref: ModelRef):
        self.ref = ref
        self.labels = list(ref.labels)
        self.image_size = ref.image_size

    def predict(self, images) -> np.ndarray:
        raise NotImplementedError

    def _check_outputs(self, n_outputs) -> None:
        if n_outputs is not None and int(n_outputs) != len(self.labels):
            raise TlcliError(
                f"'{self.ref.path}' outputs {int(n_outputs)} classes but its labels.txt lists "
                f"{len(self.labels)}: the labels do not belong to this model."
            )


class KerasPredictor(Predictor):
    """A tlcli `.keras` model (raw RGB 0-255 in, softmax out), compiled once as a tf.function."""

    kind = "keras"

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        import tensorflow as tf

        from tlcli.model import check_classifier, load_classifier

        model = load_classifier(ref.path)
        check_classifier(model, self.labels, ref.path, self.image_size)  # refused here, not by a TF traceback
        self.model = model
        spec = tf.TensorSpec((None, self.image_size, self.image_size, 3), tf.uint8)
        # One traced graph for every batch size: no retracing for the last, smaller batch.
        self._run = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), input_signature=[spec])

    def predict(self, images) -> np.ndarray:
        return self._run(images).numpy()


class SavedModelPredictor(Predictor):
    """A SavedModel folder (e.g. from Keras `model.export`), run through its serving_default signature."""

    kind = "savedmodel"

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(ref.path))
        except Exception as error:  # TF raises OSError, ValueError, protobuf DecodeError…
            raise TlcliError(f"cannot load '{ref.path}' as a SavedModel: {_first_line(error)}") from None
        signature = getattr(loaded, "signatures", {}).get("serving_default")
        if signature is None:
            raise TlcliError(f"SavedModel '{ref.path}' has no serving_default signature.")
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise TlcliError(f"SavedModel '{ref.path}' takes {len(inputs)} inputs; an image classifier takes one.")
        (self._input, spec), = inputs.items()
        outputs = signature.structured_outputs
        if len(outputs) == 1:
            self._output = next(iter(outputs))
        else:  # e.g. probabilities and logits: take the one with a score per label
            self._output = next((k for k, v in outputs.items() if v.shape[-1] == len(self.labels)), None)
            if self._output is None:
                raise TlcliError(f"SavedModel '{ref.path}' has outputs {', '.join(outputs)}; none has "
                                 f"one score per label ({len(self.labels)}).")
        self._check_outputs(outputs[self._output].shape[-1])
        self._loaded, self._signature, self._dtype, self._tf = loaded, signature, spec.dtype, tf

    def predict(self, images) -> np.ndarray:
        x = self._tf.cast(images, self._dtype)
        return self._signature(**{self._input: x})[self._output].numpy()


class TFLitePredictor(Predictor):
    """A `.tflite` model on the LiteRT interpreter, with quantized (int8/uint8) inputs and outputs
    mapped through their (scale, zero_point); TensorFlow is not imported where LiteRT is installed.
    """

    kind = "tflite"
    uses_tensorflow = False

    def __init__(self, ref: ModelRef):
        super().__init__(ref)
        self.interpreter = tflite_interpreter(ref.path)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise TlcliError(f"'{ref.path}' has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1.")
        self._in, self._out = inputs[0], outputs[0]
        self._check_outputs(self._out["shape"][-1])
        signature = self._in.get("shape_signature", self._in["shape"])
        if len(signature) != 4 or signature[-1] != 3:
            raise TlcliError(f"'{ref.path}' takes input of shape {list(signature)}, not a batch of RGB images.")
        # A fixed spatial size is what the model accepts; decode at it (normally it equals the run's size).
        if signature[1] > 0 and signature[2] > 0:
            if signature[1] != signature[2]:
                raise TlcliError(f"'{ref.path}' takes {signature[1]}x{signature[2]} images; tlcli models are square.")
            self.image_size = int(signature[1])
        self._batched = signature[0] == -1
        self._shape = None

    def predict(self, images) -> np.ndarray:
        images = np.asarray(images)
        if not len(images):
            return np.zeros((0, len(self.labels)), np.float32)
        if self._batched:
            return self._invoke(images)
        # A batch dimension fixed at 1 (as `tlcli export` writes them): one image per invocation.
        return np.concatenate([self._invoke(images[i:i + 1]) for i in range(len(images))])

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        if images.shape != self._shape:
            self.interpreter.resize_tensor_input(self._in["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self._shape = images.shape
        self.interpreter.set_tensor(self._in["index"], quantize(images, self._in))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self._out["index"]), self._out)


def quantize(images: np.ndarray, detail: dict) -> np.ndarray:
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
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_interpreter(path, threads: int | None = None):
    """An allocated interpreter for the `.tflite` file at `path`, on `threads` (default: every core).

    Every `.tflite` in tlcli (predict, evaluate, export's checks) runs through here. LiteRT is
    preferred: it is a dependency wherever it has wheels, and it never imports TensorFlow.
    Elsewhere TensorFlow's own copy of the same interpreter runs the file.
    """
    interpreter_class = _interpreter_class()
    try:
        # quiet: the native "Created TensorFlow Lite XNNPACK delegate" line. tf.lite's copy warns
        # that it is deprecated in favour of LiteRT: tlcli uses it only where LiteRT is missing.
        with quiet_native_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = interpreter_class(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise TlcliError(f"cannot load '{path}' as a TFLite model: {_first_line(error)}") from None
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


_PREDICTORS = {"keras": KerasPredictor, "savedmodel": SavedModelPredictor, "tflite": TFLitePredictor}


def open_predictor(ref: ModelRef) -> Predictor:
    """The Predictor for `ref` (from `rundir.resolve_model`); imports TensorFlow unless it is .tflite."""
    return _PREDICTORS[ref.kind](ref)


# ---------------------------------------------------------------- batched decoding and inference


def classify(predictor: Predictor, paths: list, batch_size: int = 32, progress=None) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities for every file of `paths`, decoding the next batches while one is inferred.

    Returns (probabilities (n, classes) with NaN rows for unreadable files, {index: reason}).
    `progress(n)` is called as batches finish.
    """
    if batch_size < 1:
        raise TlcliError("--batch-size must be at least 1.")
    probs = np.full((len(paths), len(predictor.labels)), np.nan, np.float32)
    errors: dict[int, str] = {}
    batches = _tf_batches if predictor.uses_tensorflow else _thread_batches
    for indices, images, ok in batches(paths, predictor.image_size, batch_size, errors):
        if ok.any():
            # Failed slots hold blank images: predicting them too keeps one batch shape throughout.
            out = predictor.predict(images)
            probs[indices[ok]] = out[ok]
            for i in indices[ok & ~np.isfinite(out).all(axis=1)]:
                errors[int(i)] = "the model's output is not a number (a broken model?)"
        if progress:
            progress(len(indices))
    return probs, errors


def classify_arrays(predictor: Predictor, images: np.ndarray, batch_size: int = 32, progress=None) -> np.ndarray:
    """Probabilities for images already decoded to (n, size, size, 3) uint8."""
    out = [np.zeros((0, len(predictor.labels)), np.float32)]
    for start in range(0, len(images), batch_size):
        out.append(predictor.predict(images[start:start + batch_size]))
        if progress:
            progress(len(out[-1]))
    return np.concatenate(out)


def _decoder(paths: list, size: int, errors: dict):
    blank = np.zeros((size, size, 3), np.uint8)

    def decode(i: int):
        try:
            return load_image(paths[i], size), True
        except ImageError as error:
            errors[i] = str(error)
            return blank, False

    return decode


def _tf_batches(paths: list, size: int, batch_size: int, errors: dict) -> Iterator:
    """A parallel tf.data pipeline: Pillow decodes in tf.data's threads (it releases the GIL)."""
    import tensorflow as tf

    decode = _decoder(paths, size, errors)

    def decode_index(i):
        image, ok = decode(int(i))
        return image, np.bool_(ok)

    def load(i):
        image, ok = tf.numpy_function(decode_index, [i], (tf.uint8, tf.bool), stateful=False)
        image.set_shape((size, size, 3))
        ok.set_shape(())
        return i, image, ok

    ds = tf.data.Dataset.range(len(paths)).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for indices, images, ok in ds.batch(batch_size).prefetch(2):
        yield indices.numpy(), images, ok.numpy()


def _thread_batches(paths: list, size: int, batch_size: int, errors: dict, ahead: int = 2) -> Iterator:
    """The same pipeline without TensorFlow: a thread pool decodes up to `ahead` batches in advance
    (bounded, so a huge folder never sits decoded in memory)."""
    decode = _decoder(paths, size, errors)
    starts = iter(range(0, len(paths), batch_size))
    pending: deque = deque()
    with ThreadPoolExecutor(min(32, (os.cpu_count() or 2) * 2)) as pool:

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                stop = min(len(paths), start + batch_size)
                pending.append((start, [pool.submit(decode, i) for i in range(start, stop)]))

        for _ in range(ahead + 1):
            submit()
        while pending:
            start, futures = pending.popleft()
            submit()
            decoded = [f.result() for f in futures]
            yield (np.arange(start, start + len(decoded)), np.stack([d[0] for d in decoded]),
                   np.array([d[1] for d in decoded]))


# ---------------------------------------------------------------- results


def predict_files(ref: ModelRef, args: list[str], top_k: int = 3, batch_size: int = 32, console=None,
                  quiet: bool = False) -> list[dict]:
    """Predict every image PATH names (files, folders, globs) with the model `ref`.

    Returns one dict per input, in input order:
    {"path", "label", "confidence", "top_k": [{"label", "confidence"}], "error"}; a file that
    cannot be read has its `error` set and no label.
    """
    from rich.console import Console

    from tlcli.progress import Step, make_progress

    if top_k < 1:
        raise TlcliError("--top-k must be at least 1.")
    items = expand_paths(args)
    predictor = open_predictor(ref)
    todo = [i for i, (_, problem) in enumerate(items) if problem is None]
    with make_progress(console or Console(stderr=True), quiet or len(todo) < 2) as progress:
        step = Step(progress, "Predicting")
        step.start(len(todo))
        probs, errors = classify(predictor, [items[i][0] for i in todo], batch_size, step.advance)
        step.done(f"{len(todo) - len(errors)} ok, {len(errors)} failed" if errors else "")
    problems = {todo[j]: reason for j, reason in errors.items()}
    rows_of = {i: j for j, i in enumerate(todo)}
    results = []
    for i, (path, problem) in enumerate(items):
        problem = problem or problems.get(i)
        if problem:
            results.append({"path": path, "label": None, "confidence": None, "top_k": [], "error": problem})
        else:
            results.append(result_row(path, probs[rows_of[i]], predictor.labels, top_k))
    return results


def result_row(path: str, probs: np.ndarray, labels: list[str], top_k: int) -> dict:
    """One prediction as the JSON row: best label, its confidence, and the top-k."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    top = [{"label": labels[j], "confidence": round(float(probs[j]), 6)} for j in order]
    return {"path": path, "label": top[0]["label"], "confidence": top[0]["confidence"], "top_k": top, "error": None}


def render(results: list[dict], fmt: str) -> str:
    """`results` as JSON (a list of objects), CSV (one column pair per top-k rank) or a plain-text table."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt == "csv":
        k = max((len(r["top_k"]) for r in results), default=0)
        header = ["path", "label", "confidence"]
        for rank in range(1, k + 1):
            header += [f"top{rank}_label", f"top{rank}_confidence"]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header + ["error"])
        for r in results:
            ranks = [v for t in r["top_k"] for v in (t["label"], t["confidence"])]
            ranks += [""] * (2 * k - len(ranks))
            writer.writerow([r["path"], r["label"] or "", "" if r["confidence"] is None else r["confidence"],
                             *ranks, r["error"] or ""])
        return buffer.getvalue()
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=160, no_color=True, highlight=False)
        console.print(results_table(results))
        return console.file.getvalue()
    raise TlcliError(f"--format must be one of {', '.join(FORMATS)}; not '{fmt}'.")


def results_table(results: list[dict]):
    """A rich table: path, label, confidence, top-k (and the reason, for inputs that failed)."""
    from rich.table import Table
    from rich.text import Text

    failed = sum(1 for r in results if r["error"])
    title = f"{len(results)} prediction(s)" + (f", {failed} failed" if failed else "")
    table = Table(title=title, title_justify="left")
    table.add_column("path", overflow="fold")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    table.add_column("top-k")
    for r in results:
        if r["error"]:
            table.add_row(Text(r["path"]), Text("error", style="bold red"), "", Text(r["error"], style="red"))
        else:
            top = ", ".join(f"{t['label']} {t['confidence']:.3f}" for t in r["top_k"])
            table.add_row(Text(r["path"]), Text(r["label"], style="bold"), f"{r['confidence']:.3f}", Text(top))
    return table


def format_for(output: Path | None, fmt: str | None) -> str:
    """--format, or else the --output file's extension (.json, .csv), or else a table."""
    if fmt:
        return fmt
    suffix = output.suffix.lower().lstrip(".") if output else ""
    return suffix if suffix in ("json", "csv") else "table"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
