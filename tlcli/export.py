"""`tlcli export`: from a run's Keras model to deployable files, each checked against the model.

Every exported model takes raw RGB pixels (0-255): the backbone's preprocessing is inside it,
the training-only augmentation stage never is. Formats are one table, `FORMATS`; adding a
precision is one entry there.

After writing, each artifact is run on the run's validation images (or --check-data) next to
the Keras model: top-1 agreement with Keras, accuracy, size and latency. An artifact below its
minimum agreement is reported as a failure (and kept, to inspect), so a quantized model cannot
quietly lose accuracy or come out unquantized.

TensorFlow is imported inside the functions that need it, so the flag parsing here is instant.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from tlcli import __version__
from tlcli.errors import TlcliError, unknown_name
from tlcli.progress import Step, make_progress, quiet_native_output
from tlcli.rundir import ModelRef, atomic_path, resolve_model, write_json, write_text

DEFAULT_CALIBRATION_SAMPLES = 200
CHECK_BATCH = 32  # batch size for the Keras and SavedModel reference predictions
LATENCY_SAMPLES = 32  # images timed one at a time for the Keras and SavedModel rows


@dataclass(frozen=True)
class Format:
    """One export format: where it goes, how it is converted and how closely it must agree."""

    file: str  # file (or folder) name in the export folder
    kind: str  # "tflite" or "saved_model"
    min_agreement: float  # default minimum top-1 agreement with the Keras model
    description: str
    optimize: bool = False  # converter.optimizations = [DEFAULT]
    supported_types: tuple[str, ...] = ()  # converter.target_spec.supported_types
    full_integer: bool = False  # int8 activations too: needs a representative dataset


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
    "saved_model": Format("saved_model", "saved_model", 0.98, "SavedModel (TF Serving)"),
}
QUANTIZE_CHOICES = ("float16", "dynamic", "int8")
_ALIASES = {"fp16": "float16", "f16": "float16", "half": "float16", "dyn": "dynamic", "dynamic_range": "dynamic",
            "i8": "int8", "uint8": "int8", "full_integer": "int8"}


def select_formats(tflite: bool = False, quantize=(), saved_model: bool = False, int8_io: bool = False) -> list[str]:
    """The formats the flags ask for, in `FORMATS` order.

    `quantize` items may repeat, be comma-separated or be "all"; any of them implies the float32
    TFLite file, and so does asking for nothing at all. --int8-io implies --quantize int8.
    """
    wanted = set()
    for item in quantize or ():
        for name in str(item).lower().replace(" ", "").split(","):
            if not name:
                continue
            if name == "all":
                wanted.update(QUANTIZE_CHOICES)
                continue
            name = _ALIASES.get(name, name)
            if name not in QUANTIZE_CHOICES:
                raise unknown_name("--quantize precision", name, (*QUANTIZE_CHOICES, "all"))
            wanted.add(name)
    if int8_io:
        wanted.add("int8")
    if tflite or wanted or not saved_model:
        wanted.add("float32")
    if saved_model:
        wanted.add("saved_model")
    return [name for name in FORMATS if name in wanted]


# ---------------------------------------------------------------- results


@dataclass
class Check:
    """How one model fared on the check images next to the Keras model."""

    format: str
    file: str
    path: str
    size_bytes: int
    accuracy: float
    latency_ms: float  # mean per image, one image at a time, on this machine
    agreement: float | None = None  # top-1 agreement with Keras; None for the Keras row
    max_prob_diff: float | None = None  # largest |p - p_keras| over all images and classes
    min_agreement: float | None = None
    passed: bool | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    output: Path
    reference: Check  # the Keras model itself
    artifacts: list[Check]
    check_data: str  # where the check images came from
    n_check: int
    n_calibration: int

    @property
    def failures(self) -> list[Check]:
        return [a for a in self.artifacts if not a.passed]

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "passed": not self.failures,
            "check_data": self.check_data,
            "n_check_images": self.n_check,
            "n_calibration_images": self.n_calibration,
            "reference": asdict(self.reference),
            "artifacts": [asdict(a) for a in self.artifacts],
        }


# ---------------------------------------------------------------- the command


def export(model: str | os.PathLike | None = None, project: str | os.PathLike = "runs",
           formats: list[str] | tuple[str, ...] = ("float32",), output: str | os.PathLike | None = None,
           calibration_data: str | os.PathLike | None = None,
           calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, int8_io: bool = False,
           check_data: str | os.PathLike | None = None, min_agreement: float | None = None,
           console: Console | None = None, quiet: bool = False) -> ExportResult:
    """Write `formats` of the model (default: the latest run) and check each against it."""
    console = console or Console(stderr=True)
    formats = [f for f in FORMATS if f in set(formats)]
    if not formats:
        raise TlcliError("nothing to export: give --tflite, --quantize or --saved-model.")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise TlcliError(f"--min-agreement must be between 0 and 1, not {min_agreement}.")
    if calibration_samples < 1:
        raise TlcliError(f"--calibration-samples must be at least 1, not {calibration_samples}.")

    ref = resolve_model(model, project)
    if ref.kind != "keras":
        raise TlcliError(f"export needs the Keras model (a run folder or .keras file), not a {ref.kind} model: "
                         f"'{ref.path}'.")
    config = _run_config(ref)
    size = ref.image_size
    needs_calibration = any(FORMATS[f].full_integer for f in formats)
    # Bad data folders fail here, before anything slow happens.
    calibration_files = _calibration_files(calibration_data) if calibration_data is not None else None
    check_files = _check_files(check_data, ref.labels) if check_data is not None else None
    needs_run_data = (needs_calibration and calibration_files is None) or check_files is None
    if needs_run_data:
        _run_data_dir(ref, config, calibration=needs_calibration and calibration_files is None,
                      check=check_files is None)

    out = Path(output) if output is not None else (ref.run_dir or ref.path.parent) / "export"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TlcliError(f"cannot create the export folder '{out}': {error.strerror or error}.") from None

    from tlcli.model import check_classifier, load_classifier

    classifier = load_classifier(ref.path)
    check_classifier(classifier, ref.labels, ref.path, ref.image_size)  # a wrong labels.txt would ship
    assert_no_augmentation(classifier)
    seed = int(config.get("seed", 0) or 0)

    with make_progress(console, quiet) as progress:
        run_data = None
        if needs_run_data:
            from tlcli.data import load_folder

            loading = Step(progress, "Loading images")
            run_data = load_folder(_run_data_dir(ref, config), size, float(config.get("val_split", 0.2)), seed,
                                   loading)
            loading.done(f"{len(run_data.train)} train, {len(run_data.val)} val")
            if run_data.class_names != ref.labels:
                raise TlcliError(f"the classes in the run's data folder ({', '.join(run_data.class_names)}) are not "
                                 f"the model's ({', '.join(ref.labels)}): pass --check-data/--calibration-data.")

        if check_files is None:
            check_images, check_labels = run_data.val.images, run_data.val.labels
            check_source = f"{_run_data_dir(ref, config)} (the run's validation split)"
        else:
            check_images, check_labels = _load_check(check_files, ref.labels, size, progress)
            check_source = str(check_data)

        calibration = None
        if needs_calibration:
            if calibration_files is None:
                pool = run_data.train.images
                pick = np.random.default_rng(seed).permutation(len(pool))[:calibration_samples]
                calibration = pool[np.sort(pick)]
            else:
                calibration = _load_calibration(calibration_files, calibration_samples, size, seed, progress,
                                                calibration_data)

        artifacts: dict[str, tuple[Path, list[str]]] = {}
        converting = Step(progress, "Converting")
        converting.start(len(formats))
        wrapper = None
        for name in formats:
            fmt = FORMATS[name]
            progress.update(converting.task, info=name)
            path = out / fmt.file
            if fmt.kind == "saved_model":
                write_saved_model(classifier, path)
                notes = []
            else:
                wrapper = wrapper or fixed_shape_model(classifier, size)
                step = Step(progress, "Calibrating") if fmt.full_integer else None
                data, notes = convert_tflite(wrapper, name, calibration, int8_io=int8_io, step=step)
                with atomic_path(path) as tmp:
                    Path(tmp).write_bytes(data)
                notes += quantization_notes(path, name)
            artifacts[name] = (path, notes)
            converting.advance()
        converting.done(", ".join(formats))
        del wrapper

        write_text(out / "labels.txt", "\n".join(ref.labels) + "\n")
        write_model_json(out, ref, config, {name: path for name, (path, _) in artifacts.items()})

        checking = Step(progress, "Checking")
        checking.start(len(check_images) * (1 + len(artifacts)))
        reference_probs, reference = check_keras(classifier, ref.path, check_images, check_labels, checking)
        checks = []
        for name, (path, notes) in artifacts.items():
            progress.update(checking.task, info=name)
            limit = FORMATS[name].min_agreement if min_agreement is None else min_agreement
            check = check_artifact(path, name, reference_probs, check_images, check_labels, limit, checking)
            check.notes += notes
            checks.append(check)
        failed = sum(1 for c in checks if not c.passed)
        checking.done(f"{len(checks) - failed} passed, {failed} failed" if failed else "all passed")

    return ExportResult(out, reference, checks, check_source, len(check_images),
                        0 if calibration is None else len(calibration))


# ---------------------------------------------------------------- inputs


def _run_config(ref: ModelRef) -> dict:
    if ref.run_dir is None:
        return {}
    try:
        return json.loads((ref.run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise TlcliError(f"cannot read '{ref.run_dir / 'config.json'}'.") from None


def _run_data_dir(ref: ModelRef, config: dict, calibration: bool = True, check: bool = True) -> Path:
    """The run's DATA_DIR, which gives calibration (train split) and check (val split) images."""
    needed = " and ".join(flag for flag, on in (("--calibration-data", calibration), ("--check-data", check)) if on)
    data_dir = config.get("data_dir")
    if not data_dir:
        raise TlcliError(f"'{ref.path}' is not in a run folder with a config.json: pass {needed} DIR.")
    if not Path(data_dir).is_dir():
        raise TlcliError(f"the run's data folder '{data_dir}' is not there any more: pass {needed} DIR.")
    return Path(data_dir)


def _calibration_files(folder) -> list[Path]:
    from tlcli.data import find_images

    folder = Path(folder)
    if not folder.is_dir():
        raise TlcliError(f"--calibration-data: '{folder}' is not a folder.")
    files = find_images(folder)
    if not files:
        raise TlcliError(f"--calibration-data: no images in '{folder}'.")
    return files


def _load_calibration(files: list[Path], samples: int, size: int, seed: int, progress, folder) -> np.ndarray:
    from tlcli.data import load_images

    pick = sorted(np.random.default_rng(seed).permutation(len(files))[:samples].tolist())
    step = Step(progress, "Loading calibration images")
    step.start(len(pick))
    images, ok, _ = load_images([files[i] for i in pick], size, step.advance)
    step.done(f"{len(ok)} images")
    if not ok:
        raise TlcliError(f"--calibration-data: none of the images in '{folder}' can be read.")
    return images


def _check_files(folder, labels: list[str]) -> dict[str, list[Path]]:
    """{class: files} of --check-data: class folders, or the val/ (else test/) of a split layout."""
    from tlcli.data import detect_layout, discover

    folder = Path(folder)
    if not folder.is_dir():
        raise TlcliError(f"--check-data: '{folder}' is not a folder.")
    layout = detect_layout(folder)
    chosen = next(layout[k] for k in ("val", "test", "all", "train") if k in layout)
    classes, _ = discover(chosen)
    if not classes:
        raise TlcliError(f"--check-data: no images in class folders under '{chosen}'.")
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise TlcliError(f"--check-data: classes the model does not know: {', '.join(unknown)} "
                         f"(its labels: {', '.join(labels)}).")
    return classes


def _load_check(files: dict[str, list[Path]], labels: list[str], size: int, progress) -> tuple[np.ndarray, np.ndarray]:
    from tlcli.data import load_images

    flat = [(labels.index(cls), path) for cls in sorted(files) for path in files[cls]]
    step = Step(progress, "Loading check images")
    step.start(len(flat))
    images, ok, _ = load_images([p for _, p in flat], size, step.advance)
    step.done(f"{len(ok)} images")
    if not ok:
        raise TlcliError("--check-data: none of its images can be read.")
    return images, np.asarray([flat[i][0] for i in ok], np.int32)


# ---------------------------------------------------------------- conversion


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

    Full integer formats calibrate on `calibration` (uint8 images). With `int8_io` their input
    and output tensors are uint8; the input maps 0..255 to pixel values 0..255 (scale 1,
    zero point 0), so an app feeds camera bytes as they are.
    """
    import tensorflow as tf

    fmt = FORMATS[name]

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
            raise TlcliError(f"TFLite conversion ({name}) failed: {_first_line(error)}") from None
        first = _first_line(error)
    # Some ops have no int8 kernel: keep them in float rather than fail, and say so.
    converter = make_converter()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        with quiet_native_output():
            data = converter.convert()
    except Exception as error:
        raise TlcliError(f"TFLite conversion ({name}) failed: {_first_line(error)}") from None
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
    interpreter = _interpreter(path)
    io_indices = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    tensors = [t for t in interpreter.get_tensor_details() if t["index"] not in io_indices]
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


def write_model_json(out: Path, ref: ModelRef, config: dict, files: dict[str, Path]) -> dict:
    """model.json: what an app needs to feed the models and read their output without guessing.

    Entries for files exported earlier into the same folder are kept while those files exist.
    """
    size = ref.image_size
    entries = {}
    previous = out / "model.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
            if old.get("labels") == ref.labels and old.get("input_size") == size:
                entries = {k: v for k, v in old.get("files", {}).items() if (out / k).exists()}
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    for name, path in files.items():
        entries[path.name] = _file_entry(name, path, size)
    info = {
        "tlcli_version": __version__,
        "backbone": config.get("backbone", "unknown"),
        "input_size": size,
        "input_shape": [1, size, size, 3],
        "input_range": [0, 255],
        "input_color": "RGB",
        "input_layout": "NHWC",
        "preprocessing": "inside the model: feed raw RGB pixels resized to input_size, no scaling",
        "output": "softmax probabilities, one per label, in labels order",
        "labels": list(ref.labels),
        "source": str(ref.path),
        "files": dict(sorted(entries.items())),
    }
    write_json(previous, info)
    return info


def _file_entry(name: str, path: Path, size: int) -> dict:
    fmt = FORMATS[name]
    entry = {"format": name, "description": fmt.description}
    if fmt.kind == "saved_model":
        entry.update({"signature": "serving_default", "input": "image: float32 [batch, height, width, 3], any size",
                      "output": "probabilities"})
        return entry
    interpreter = _interpreter(path)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    for key, tensor in (("input", inp), ("output", outp)):
        scale, zero_point = tensor["quantization"]
        entry[f"{key}_dtype"] = np.dtype(tensor["dtype"]).name
        entry[f"{key}_shape"] = [int(d) for d in tensor["shape"]]
        if scale:
            entry[f"{key}_quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return entry


# ---------------------------------------------------------------- running and checking


def _interpreter(path):
    from tlcli.predict import tflite_interpreter  # LiteRT, else TensorFlow's tf.lite

    return tflite_interpreter(path)


def tensor_dtypes(path, include_io: bool = True) -> Counter:
    """{dtype name: count} over the tensors of a .tflite model, per the interpreter."""
    interpreter = _interpreter(path)
    io_indices = {d["index"] for d in interpreter.get_input_details() + interpreter.get_output_details()}
    return Counter(np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()
                   if include_io or t["index"] not in io_indices)


def run_tflite(path, images: np.ndarray, progress=None) -> np.ndarray:
    """Class probabilities of a .tflite model for uint8 RGB images (n, h, w, 3), one at a time.

    Quantized (int8/uint8) inputs and outputs are converted with their scale and zero point.
    """
    return _run_tflite_timed(path, images, progress)[0]


def _run_tflite_timed(path, images: np.ndarray, progress=None) -> tuple[np.ndarray, float]:
    interpreter = _interpreter(path)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    if tuple(inp["shape"][1:3]) != tuple(images.shape[1:3]):
        raise TlcliError(f"'{path}' takes {inp['shape'][1]}x{inp['shape'][2]} images, "
                         f"not {images.shape[1]}x{images.shape[2]}.")
    if inp["shape"][0] != 1:
        interpreter.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
        interpreter.allocate_tensors()
    from tlcli.predict import dequantize, quantize

    results, seconds = [], 0.0
    for i, image in enumerate(images):
        x = quantize(image[None], inp)
        start = time.perf_counter()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(outp["index"])
        if i > 0 or len(images) == 1:  # the first call warms up
            seconds += time.perf_counter() - start
        results.append(dequantize(y, outp)[0])
        if progress:
            progress(1)
    timed = max(1, len(images) - 1)
    probs = np.stack(results) if results else np.zeros((0, outp["shape"][-1]), np.float32)
    return probs, seconds / timed


def check_keras(classifier, path: Path, images: np.ndarray, labels: np.ndarray, step: Step | None = None):
    """The reference: the Keras model's probabilities on the check images, and its own row."""
    probs = _batched(lambda x: classifier.predict_on_batch(x), images, step)
    latency = _latency(lambda x: classifier.predict_on_batch(x), images)
    row = Check("keras", Path(path).name, str(path), _size(path), _accuracy(probs, labels), latency * 1000.0)
    return probs, row


def check_artifact(path, name: str, reference: np.ndarray, images: np.ndarray, labels: np.ndarray,
                   min_agreement: float, step: Step | None = None) -> Check:
    """Run artifact `path` (format `name`) on `images` and compare it with the Keras probabilities."""
    path = Path(path)
    advance = step.advance if step is not None else None
    if FORMATS[name].kind == "saved_model":
        probs, latency = _run_saved_model_timed(path, images, step)
    else:
        probs, latency = _run_tflite_timed(path, images, advance)
    agreement = float(np.mean(probs.argmax(-1) == reference.argmax(-1))) if len(images) else 0.0
    diff = float(np.abs(probs - reference).max()) if len(images) else 0.0
    return Check(name, path.name, str(path), _size(path), _accuracy(probs, labels), latency * 1000.0,
                 agreement=agreement, max_prob_diff=diff, min_agreement=min_agreement,
                 passed=agreement >= min_agreement)


def _run_saved_model_timed(path: Path, images: np.ndarray, step: Step | None = None):
    import tensorflow as tf

    with quiet_native_output():
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def run(x):
        return serve(image=tf.constant(x))["probabilities"].numpy()

    return _batched(run, images, step), _latency(run, images)


def _batched(run, images: np.ndarray, step: Step | None = None) -> np.ndarray:
    out = []
    for i in range(0, len(images), CHECK_BATCH):
        batch = images[i:i + CHECK_BATCH].astype(np.float32)
        out.append(np.asarray(run(batch), np.float32))
        if step is not None:
            step.advance(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _latency(run, images: np.ndarray) -> float:
    """Mean seconds per image, one image at a time, after a warm-up call."""
    sample = images[:LATENCY_SAMPLES].astype(np.float32)
    if not len(sample):
        return 0.0
    run(sample[:1])
    start = time.perf_counter()
    for image in sample:
        run(image[None])
    return (time.perf_counter() - start) / len(sample)


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(-1) == labels)) if len(labels) else 0.0


def _size(path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ---------------------------------------------------------------- plumbing


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
