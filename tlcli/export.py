"""`tlcli export`: from a run's Keras model to deployable files, each checked against the model.

The steps have their own modules: `tlcli.convert` writes each format (`FORMATS`; ONNX through
`tlcli.onnx_format`), `tlcli.model_json`
describes them for apps, and `tlcli.parity` runs each file next to the Keras model on the run's
validation images (or --check-data), through `tlcli.runtime` as `tlcli predict` runs it. A file
below its minimum agreement is reported as a failure (and kept, to inspect). This module gathers
the images those steps need and runs them in order.

TensorFlow is imported inside the functions that need it, so the flag parsing here is instant.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from rich.console import Console

from tlcli.convert import (FORMATS, ModelInfo, assert_no_augmentation, convert_tflite, fixed_shape_model,
                           quantization_notes, write_saved_model, write_tflite)
from tlcli.errors import TlcliError, unknown_name
from tlcli.model_json import write_model_json
from tlcli.parity import Check, check_artifact, check_reference
from tlcli.progress import Step, make_progress
from tlcli.rundir import ModelRef, resolve_model, write_text
from tlcli.runtime import open_model

DEFAULT_CALIBRATION_SAMPLES = 200

QUANTIZE_CHOICES = ("float16", "dynamic", "int8")
_ALIASES = {"fp16": "float16", "f16": "float16", "half": "float16", "dyn": "dynamic", "dynamic_range": "dynamic",
            "i8": "int8", "uint8": "int8", "full_integer": "int8"}


def select_formats(tflite: bool = False, quantize=(), saved_model: bool = False, int8_io: bool = False,
                   onnx: bool = False) -> list[str]:
    """The formats the flags ask for, in `FORMATS` order.

    `quantize` items may repeat, be comma-separated or be "all"; any of them implies the float32
    TFLite file, and so does asking for nothing at all (--saved-model or --onnx alone write only
    that). --int8-io adds its own file (model_int8_io.tflite) beside any --quantize int8 one.
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
        wanted.add("int8_io")
    if tflite or wanted or not (saved_model or onnx):
        wanted.add("float32")
    if saved_model:
        wanted.add("saved_model")
    if onnx:
        wanted.add("onnx")
    return [name for name in FORMATS if name in wanted]


@dataclass
class ExportResult:
    """What `export` wrote and how each file fared in the parity check."""

    output: Path
    reference: Check  # the Keras model itself
    artifacts: list[Check]
    check_data: str  # where the check images came from
    n_check: int
    n_calibration: int
    # A multi-label model's files agree on an image when they give it the same label set, and
    # its accuracy is the exact-match accuracy.
    multi_label: bool = False

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
            **({"multi_label": True} if self.multi_label else {}),
        }


# ---------------------------------------------------------------- the command


def export(*, model: str | os.PathLike | None = None, project: str | os.PathLike = "runs",
           formats: list[str] | tuple[str, ...] = ("float32",), output: str | os.PathLike | None = None,
           calibration_data: str | os.PathLike | None = None,
           calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, int8_io: bool = False,
           check_data: str | os.PathLike | None = None, min_agreement: float | None = None,
           console: Console | None = None, quiet: bool = False) -> ExportResult:
    """Write `formats` of the model (default: the latest run of `project`) into `output` (default:
    <run>/export), with labels.txt and model.json, and check each against the Keras model.

    int8 calibrates on `calibration_samples` images of `calibration_data` (default: the run's
    training images); `int8_io` adds the "int8_io" format (uint8 input and output) to `formats`.
    Every .tflite carries TFLite metadata with the labels, the .onnx its labels in its metadata
    (onnx needs the [onnx] extra, checked before any slow work). The check runs on `check_data`
    (default: the run's validation images); `min_agreement` overrides each format's own minimum.
    """
    console = console or Console(stderr=True)
    formats = [f for f in FORMATS if f in {*formats, *(["int8_io"] if int8_io else [])}]
    if not formats:
        raise TlcliError("nothing to export: give --tflite, --quantize, --saved-model or --onnx.")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise TlcliError(f"--min-agreement must be between 0 and 1, not {min_agreement}.")
    if calibration_samples < 1:
        raise TlcliError(f"--calibration-samples must be at least 1, not {calibration_samples}.")
    if "onnx" in formats:  # a missing [onnx] extra fails here, not after loading and converting
        from tlcli.onnx_format import require_converter

        require_converter()

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

    keras_runner = open_model(ref)  # refuses a labels.txt that does not fit the model: it would ship
    assert_no_augmentation(keras_runner.model)
    seed = int(config.get("seed", 0) or 0)

    with make_progress(console, quiet) as progress:
        run_data = None
        if needs_run_data:
            loading = Step(progress, "Loading images")
            run_data = load_run_data(ref, config, size, loading)
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

        info = ModelInfo(tuple(ref.labels), config.get("backbone", "unknown"), ref.run_dir.name if ref.run_dir else "",
                         tuple(ref.thresholds) if ref.multi_label else None)
        artifacts = _convert_all(keras_runner.model, formats, out, size, calibration, info, progress)
        write_text(out / "labels.txt", "\n".join(ref.labels) + "\n")
        write_model_json(out, ref, config, {name: path for name, (path, _) in artifacts.items()})
        reference, checks = _check_all(keras_runner, artifacts, check_images, check_labels, min_agreement, progress)

    return ExportResult(out, reference, checks, check_source, len(check_images),
                        0 if calibration is None else len(calibration), ref.multi_label)


def _convert_all(classifier, formats: list[str], out: Path, size: int, calibration, info: ModelInfo,
                 progress) -> dict[str, tuple[Path, list[str]]]:
    """Write each format into `out`, .tflite files with `info` as metadata and the .onnx with the
    labels; {format: (path, notes)}."""
    artifacts: dict[str, tuple[Path, list[str]]] = {}
    converting = Step(progress, "Converting")
    converting.start(len(formats))
    wrapper = None
    for name in formats:
        fmt = FORMATS[name]
        progress.update(converting.task, info=name)
        path = out / fmt.file
        if fmt.kind == "savedmodel":
            write_saved_model(classifier, path)
            notes = []
        elif fmt.kind == "onnx":
            from tlcli.onnx_format import convert_onnx

            convert_onnx(classifier, path, size, list(info.labels),
                         None if info.thresholds is None else list(info.thresholds))
            notes = []
        else:
            wrapper = wrapper or fixed_shape_model(classifier, size)
            step = Step(progress, "Calibrating") if fmt.full_integer else None
            data, notes = convert_tflite(wrapper, name, calibration, step=step)
            write_tflite(path, data, info)
            notes += quantization_notes(path, name)
        artifacts[name] = (path, notes)
        converting.advance()
    converting.done(", ".join(formats))
    return artifacts


def _check_all(keras_runner, artifacts: dict[str, tuple[Path, list[str]]], images: np.ndarray, truth: np.ndarray,
               min_agreement: float | None, progress) -> tuple[Check, list[Check]]:
    """The Keras model's row and each file's, every one run by `tlcli.runtime` as predict runs it."""
    checking = Step(progress, "Checking")
    checking.start(len(images) * (1 + len(artifacts)))
    reference_probs, reference = check_reference(keras_runner, images, truth, checking)
    checks = []
    for name, (path, notes) in artifacts.items():
        progress.update(checking.task, info=name)
        limit = FORMATS[name].min_agreement if min_agreement is None else min_agreement
        runner = open_model(replace(keras_runner.ref, kind=FORMATS[name].kind, path=path))
        check = check_artifact(runner, name, reference_probs, images, truth, limit, checking)
        check.notes += notes
        checks.append(check)
    failed = sum(1 for c in checks if not c.passed)
    checking.done(f"{len(checks) - failed} passed, {failed} failed" if failed else "all passed")
    return reference, checks


# ---------------------------------------------------------------- inputs


def _run_config(ref: ModelRef) -> dict:
    if ref.run_dir is None:
        return {}
    try:
        return json.loads((ref.run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise TlcliError(f"cannot read '{ref.run_dir / 'config.json'}'.") from None


def load_run_data(ref: ModelRef, config: dict, size: int, progress=None):
    """The run's images, decoded and split as training split them (`config`: its config.json)."""
    from tlcli.data import load_folder
    from tlcli.labelfile import Columns

    return load_folder(_run_data_dir(ref, config), size, float(config.get("val_split", 0.2)),
                       int(config.get("seed", 0) or 0), progress,
                       Columns(config.get("path_column"), config.get("label_column")),
                       label_delimiter=config.get("label_delimiter"), multi_label=bool(config.get("multi_label")))


def _run_data_dir(ref: ModelRef, config: dict, calibration: bool = True, check: bool = True) -> Path:
    """The run's DATA_DIR (a folder or a label file), which gives calibration (train split) and
    check (val split) images."""
    needed = " and ".join(flag for flag, on in (("--calibration-data", calibration), ("--check-data", check)) if on)
    data_dir = config.get("data_dir")
    if not data_dir:
        raise TlcliError(f"'{ref.path}' is not in a run folder with a config.json: pass {needed} DIR.")
    if not Path(data_dir).exists():
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

