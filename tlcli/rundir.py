"""The run directory: the unit of work every command reads or writes.

A run is created under a fresh name (never overwritten), its files are written atomically
(temporary name, then rename), and it is marked complete, and made the latest run, only once
training has finished.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlcli.errors import TlcliError

LATEST = "latest"  # file in the project folder naming the newest complete run
COMPLETE = ".complete"  # marker written last into a finished run


def create_run_dir(project: str | os.PathLike, name: str) -> Path:
    """Make `project/name`, or `name2`, `name3`, … if taken; never reuses an existing folder."""
    if not re.fullmatch(r"[\w.\- ]+", name) or name in (".", ".."):
        raise TlcliError(f"--name '{name}' must be a plain folder name.")
    project = Path(project)
    try:
        project.mkdir(parents=True, exist_ok=True)
        for n in range(1, 100_000):
            path = project / (name if n == 1 else f"{name}{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as error:
        raise TlcliError(f"cannot create a run folder in '{project}': {error.strerror or error}.") from None
    raise TlcliError(f"too many runs named '{name}' in '{project}'.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes private (0600) files; give the result the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        # File names that are not valid UTF-8 (surrogate escapes) are written as \xNN, not a crash.
        Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace")


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_csv(path: str | os.PathLike, header: list[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_model(model, path: str | os.PathLike) -> None:
    """model.save, atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()  # numpy scalars
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def mark_complete(run: Path) -> None:
    """Mark `run` finished and make it the project's latest run."""
    write_text(run / COMPLETE, "")
    write_text(run.parent / LATEST, run.name + "\n")


def is_complete(run: Path) -> bool:
    return (run / COMPLETE).exists()


def latest_run(project: str | os.PathLike = "runs") -> Path:
    """The newest complete run in `project`, or an error saying how to make one."""
    project = Path(project)
    pointer = project / LATEST
    if pointer.is_file():
        run = project / pointer.read_text(encoding="utf-8").strip()
        if is_complete(run):
            return run
    runs = [p for p in project.glob("*") if p.is_dir() and is_complete(p)] if project.is_dir() else []
    if not runs:
        raise TlcliError(f"no finished run in '{project}/': train one with `tlcli train DATA_DIR`, or pass --model.")
    return max(runs, key=lambda p: (p / COMPLETE).stat().st_mtime)


# ---------------------------------------------------------------- --model resolution

MODEL_KINDS = ("keras", "savedmodel", "tflite", "onnx")


@dataclass(frozen=True)
class ModelRef:
    """A model to run, found from --model (or the latest run), with what is needed to feed it."""

    kind: str  # one of MODEL_KINDS
    path: Path
    labels: list[str]  # empty for a lone .onnx: its runner reads them from the file's metadata
    image_size: int  # 0: not known beside the model (a lone .tflite or .onnx): its runner reads it from the file
    run_dir: Path | None  # the run it belongs to, when known
    # A multi-label model (sigmoid outputs): an image carries every label whose probability reaches
    # the label's threshold. False for a lone .onnx until its runner reads its metadata.
    multi_label: bool = False
    thresholds: list[float] | None = None  # one per label for a multi-label model, else None


def resolve_model(model: str | os.PathLike | None, project: str | os.PathLike = "runs") -> ModelRef:
    """--model rules: a run folder, a .keras file, a SavedModel folder, a .tflite or a .onnx file;
    None means the latest run. Labels and input size come from the files beside the model; a
    .tflite or .onnx with none beside it names its classes from its own metadata.
    """
    path = latest_run(project) if model is None else Path(model)
    if not path.exists():
        raise TlcliError(f"--model: '{path}' does not exist (give a run folder, .keras, SavedModel folder, .tflite or .onnx).")
    if path.is_dir() and (path / "model.keras").is_file():
        return _ref("keras", path / "model.keras", path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return _ref("savedmodel", path, path.parent)
    if path.is_file() and path.suffix == ".keras":
        return _ref("keras", path, path.parent)
    if path.is_file() and path.suffix == ".tflite":
        return _ref("tflite", path, path.parent)
    if path.is_file() and path.suffix == ".onnx":
        return _ref("onnx", path, path.parent)
    if path.is_dir():
        raise TlcliError(f"--model: '{path}' holds no model.keras or saved_model.pb (an unfinished run?).")
    raise TlcliError(f"--model: '{path}' is not a model (expected .keras, .tflite, .onnx, a SavedModel or run folder).")


def _ref(kind: str, path: Path, folder: Path) -> ModelRef:
    """Find labels.txt and the input size beside the model: in its folder, or the run above it.

    A .tflite or .onnx needs neither: its metadata can hold the labels, and its input tensor has
    the size. The .onnx labels are read by its runner: onnx_format imports this module.
    """
    for candidate in (folder, folder.parent, folder.parent.parent):
        labels_file = candidate / "labels.txt"
        if labels_file.is_file():
            labels = [l for l in labels_file.read_text(encoding="utf-8").splitlines() if l.strip()]
            size = _image_size(candidate, required=kind not in ("tflite", "onnx"))
            thresholds = _thresholds(candidate, labels)
            if thresholds is None and kind == "tflite":  # a .tflite moved beside a labels.txt: its own say
                thresholds = _tflite_thresholds(path, labels)
            return ModelRef(kind, path, labels, size, _run_of(candidate), thresholds is not None, thresholds)
    if kind == "tflite":
        from tlcli.tflite_metadata import read_labels  # flatbuffers and zipfile only: no TensorFlow

        try:
            labels = read_labels(path)
        except OSError as error:
            raise TlcliError(f"cannot read '{path}': {error.strerror or error}.") from None
        if labels:
            thresholds = _tflite_thresholds(path, labels)
            return ModelRef(kind, path, labels, 0, None, thresholds is not None, thresholds)
        raise TlcliError(f"no labels.txt beside '{path}', in its run folder or in its TFLite metadata: "
                         "cannot name the classes.")
    if kind == "onnx":
        return ModelRef(kind, path, [], 0, None)
    raise TlcliError(f"no labels.txt beside '{path}' or in its run folder: cannot name the classes.")


def _image_size(folder: Path, required: bool = True) -> int:
    for name, key in (("model.json", "input_size"), ("config.json", "image_size")):
        file = folder / name
        if file.is_file():
            value = _json(file).get(key)
            if isinstance(value, list):
                value = value[0]
            if value:
                return int(value)
    if not required:
        return 0
    raise TlcliError(f"cannot tell the model's input size: no config.json or model.json in '{folder}'.")


THRESHOLDS_FILE = "thresholds.json"  # a multi-label run's threshold per label, tuned by training


def _thresholds(folder: Path, labels: list[str]) -> list[float] | None:
    """A multi-label model's thresholds, one per label, from the files beside it: an export
    folder's model.json, else a run's config.json and thresholds.json (0.5 each when training
    wrote none); None for a single-label model."""
    for name in ("model.json", "config.json"):
        file = folder / name
        if not file.is_file():
            continue
        info = _json(file)
        if not info.get("multi_label"):
            return None
        if name == "model.json":
            return check_thresholds(info.get("thresholds"), labels, file)
        tuned = folder / THRESHOLDS_FILE
        if not tuned.is_file():
            return [0.5] * len(labels)
        saved = _json(tuned)
        if saved.get("labels", labels) != labels:
            raise TlcliError(f"'{tuned}' is for the labels {', '.join(map(str, saved['labels']))}, not labels.txt's.")
        return check_thresholds(saved.get("thresholds"), labels, tuned)
    return None


def _tflite_thresholds(path: Path, labels: list[str]) -> list[float] | None:
    from tlcli.tflite_metadata import read_thresholds  # flatbuffers and zipfile only: no TensorFlow

    thresholds = read_thresholds(path)
    return None if thresholds is None else check_thresholds(thresholds, labels, path)


def check_thresholds(values, labels: list[str], where) -> list[float]:
    """`values` as one threshold per label, each in 0..1, or a one-line error naming `where`."""
    ok = isinstance(values, list) and len(values) == len(labels) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in values)
    if not ok:
        raise TlcliError(f"'{where}' must hold one threshold between 0 and 1 per label ({len(labels)}), "
                         f"not {str(values)[:80]}.")
    return [float(v) for v in values]


def _json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise TlcliError(f"'{file}' is not valid JSON.") from None
    return data if isinstance(data, dict) else {}


def _run_of(folder: Path) -> Path | None:
    return folder if (folder / "config.json").is_file() else None


def owning_run(ref: ModelRef) -> Path | None:
    """The run folder a model belongs to: its own, or the one above an export folder."""
    if ref.run_dir is not None:
        return ref.run_dir
    folder = ref.path.parent
    for candidate in (folder, folder.parent):
        if (candidate / "config.json").is_file() and (candidate / "labels.txt").is_file():
            return candidate
    return None
