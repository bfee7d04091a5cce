"""`tlcli runs`: the runs of a project folder, one record each, read from the files `train`,
`evaluate` and `export` leave in a run folder; and two runs side by side.

    config.json, labels.txt  written when the run starts
    history.csv, last/       rewritten after every epoch; last/ is the resumable checkpoint
    metrics.json, .complete  written when training ends (last/ is removed just before)
    eval/metrics.json        `tlcli evaluate` on the run's own model
    export/                  `tlcli export`

A run is complete with `.complete`, interrupted while `last/` can resume it, and failed
otherwise: training records no error, so a run that is neither finished nor resumable is one
that died (or is still in its first epoch). Every file is read defensively: a half-written,
damaged or foreign folder gives a record with what could be read, never a crash.

No TensorFlow here; matplotlib only for the comparison's curves.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from tlcli.errors import TlcliError, unknown_name
from tlcli.rundir import COMPLETE

# Files only a tlcli run folder holds: a folder with none of them is not a run.
RUN_FILES = ("config.json", "labels.txt", "history.csv", "metrics.json", "model.keras", COMPLETE, "last")
EXPORT_SUFFIXES = (".tflite", ".onnx", ".keras")
COLUMNS = ("name", "date", "data", "backbone", "size", "val_acc", "test_acc", "time", "status", "exports")
BEST_FIRST = ("val_acc", "test_acc")  # sorted highest first; every other column ascending
STATUSES = ("complete", "interrupted", "failed")
HISTORY_NUMBERS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy")  # a row needs all of them


@dataclass
class RunRecord:
    """What one run folder says about itself; None where a file is missing or unreadable."""

    name: str
    path: str
    status: str  # one of STATUSES
    date: str | None = None  # start time, ISO 8601 with the local offset
    data_dir: str | None = None
    backbone: str | None = None
    image_size: int | None = None
    val_accuracy: float | None = None  # the kept (best) model's
    test_accuracy: float | None = None  # `tlcli evaluate`'s, on eval_split
    eval_split: str | None = None
    seconds: float | None = None
    epochs: int = 0  # rows of history.csv
    resume: str | None = None  # the command that continues an interrupted run
    note: str | None = None  # why a run counts as failed
    exports: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # files that were there but could not be read

    def to_dict(self) -> dict:
        return asdict(self)

    def sort_key(self, column: str):
        """The value `--sort column` orders by; None sorts last whatever the direction."""
        return {
            "name": self.name.lower(), "date": datetime.fromisoformat(self.date) if self.date else None, "data": (self.data_dir or "").lower() or None,
            "backbone": self.backbone, "size": self.image_size, "val_acc": self.val_accuracy,
            "test_acc": self.test_accuracy, "time": self.seconds, "status": STATUSES.index(self.status),
            "exports": len(self.exports) or None,
        }[column]


# ---------------------------------------------------------------- reading one run


def read_run(run: str | os.PathLike) -> RunRecord:
    """One run folder's record (the resume command names it as `run` does)."""
    run = Path(run)
    problems: list[str] = []
    config = read_json(run / "config.json", problems) or {}
    metrics = read_json(run / "metrics.json", problems) or {}
    history = read_history(run / "history.csv", problems)
    state = read_json(run / "last" / "state.json", problems) or read_json(run / ".last.old" / "state.json", problems)
    evaluation = read_json(run / "eval" / "metrics.json", problems) or {}

    if (run / COMPLETE).exists():
        status, resume, note = "complete", None, None
        if not (run / "model.keras").is_file():
            problems.append("model.keras is missing")
    elif state is not None:
        status, resume, note = "interrupted", f"tlcli train --resume {shlex.quote(str(run))}", None
    else:
        status, resume = "failed", None
        note = "stopped with no checkpoint to resume from" if history else "stopped before its first epoch ended"

    best = state.get("best") if state else None
    val = _number(metrics.get("val_accuracy"))
    if val is None and isinstance(best, list) and best:
        val = _number(best[0])  # the best model so far, the one in model.keras
    if val is None:
        val = max((row["val_accuracy"] for row in history), default=None)

    # metrics.json's seconds cover only the last session of a resumed run; the epochs' own
    # seconds in history.csv cover all of them (the one-off caching pass aside).
    phases = metrics.get("seconds")
    seconds = _number(phases.get("total")) if isinstance(phases, dict) else None
    if history and (seconds is None or metrics.get("resumed") is True):
        seconds = round(sum(row["seconds"] for row in history), 2)

    test = _number(evaluation.get("accuracy"))
    return RunRecord(
        name=run.name, path=str(run), status=status, date=_start_time(run),
        data_dir=_text(config.get("data_dir")), backbone=_text(config.get("backbone")),
        image_size=_whole(config.get("image_size")), val_accuracy=val,
        test_accuracy=test, eval_split=_text(evaluation.get("split")) if test is not None else None,
        seconds=seconds, epochs=len(history), resume=resume, note=note, exports=_exports(run / "export"),
        problems=problems,
    )


def read_json(path: Path, problems: list[str]) -> dict | None:
    """A JSON object from `path`; None when missing, and a note in `problems` when unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        problems.append(f"{_relative(path)} is unreadable")
        return None
    if not isinstance(value, dict):
        problems.append(f"{_relative(path)} is not a JSON object")
        return None
    return value


def read_history(path: Path, problems: list[str] | None = None) -> list[dict]:
    """history.csv's rows with numbers for values; a row with a missing or bad number is left out
    (a file copied half-way, or edited by hand)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error):
        if problems is not None:
            problems.append(f"{_relative(path)} is unreadable")
        return []
    rows = []
    for row in raw:
        values = {key: _number(_float(value)) for key, value in row.items() if isinstance(key, str)}
        if all(values.get(key) is not None for key in HISTORY_NUMBERS):
            values.update(epoch=int(values["epoch"]), phase=int(values["phase"]), seconds=values.get("seconds") or 0.0)
            rows.append(values)
    return rows


def _start_time(run: Path) -> str | None:
    """When the run started: config.json and labels.txt are written first; either may be
    rewritten later (a resume with moved images, classes dropped while caching), never earlier."""
    times = []
    for name in ("config.json", "labels.txt"):
        try:
            times.append((run / name).stat().st_mtime)
        except OSError:
            pass
    if not times:
        try:
            times.append(run.stat().st_mtime)
        except OSError:
            return None
    return datetime.fromtimestamp(min(times)).astimezone().isoformat(timespec="seconds")


def _exports(folder: Path) -> list[str]:
    """The model files `tlcli export` left in `folder` (a SavedModel is a folder, shown with a /)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith("."):  # temporaries of an export in progress or killed
            continue
        if entry.is_file() and entry.suffix in EXPORT_SUFFIXES:
            found.append(entry.name)
        elif entry.is_dir() and (entry / "saved_model.pb").is_file():
            found.append(entry.name + "/")
    return found


def _relative(path: Path) -> str:
    """A file's name within its run folder, for notes: eval/metrics.json, last/state.json."""
    parts = path.parts
    return "/".join(parts[-2:]) if parts[-2] in ("eval", "last", ".last.old") else path.name


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    return float(value)


def _whole(value) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


# ---------------------------------------------------------------- a project's runs


def list_runs(project: str | os.PathLike = "runs", sort: str | None = None, reverse: bool = False) -> list[RunRecord]:
    """A record per run folder in `project`, oldest first, or by `sort` (one of COLUMNS;
    accuracies best first); `reverse` flips the order. Runs without the value go last."""
    if sort is not None and sort not in COLUMNS:
        raise unknown_name("column", sort, COLUMNS, f"Columns: {', '.join(COLUMNS)}.")
    project = Path(project)
    if not project.is_dir():
        raise TlcliError(f"no project folder '{project}': train a run with `tlcli train DATA_DIR`, "
                         "or pass --project.")
    records = sorted((read_run(folder) for folder in _run_folders(project)), key=lambda r: r.name)
    sort = sort or "date"
    present = [r for r in records if r.sort_key(sort) is not None]
    missing = [r for r in records if r.sort_key(sort) is None]
    present.sort(key=lambda r: r.sort_key(sort), reverse=(sort in BEST_FIRST) != reverse)
    return present + missing


def _run_folders(project: Path) -> list[Path]:
    try:
        entries = sorted(project.iterdir())
    except OSError as error:
        raise TlcliError(f"cannot read '{project}': {error.strerror or error}.") from None
    return [p for p in entries if not p.name.startswith(".") and p.is_dir() and is_run(p)]


def is_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def find_run(name: str, project: str | os.PathLike = "runs") -> Path:
    """A run given by its name in `project`, or by a path; an unknown one gets close matches."""
    for candidate in (Path(project) / name, Path(name)):
        if candidate.is_dir() and is_run(candidate):
            return candidate
    if Path(name).is_dir():
        raise TlcliError(f"'{name}' is not a run folder (no config.json, history.csv, last/ or .complete).")
    names = [p.name for p in _run_folders(Path(project))] if Path(project).is_dir() else []
    where = f"Runs in '{project}': {', '.join(names)}." if names else f"'{project}' holds no runs."
    raise unknown_name("run", name, names, where)


# ---------------------------------------------------------------- two runs side by side

MISSING = "—"
EVAL_FIGURES = ("split", "accuracy", "top_k_accuracy", "loss", "n_images")  # eval/metrics.json's headline


@dataclass
class Comparison:
    """Two runs' settings and figures as text, row by row, and the PNG of their curves."""

    runs: tuple[RunRecord, RunRecord]
    rows: list[tuple[str, str, str, str]]  # (section, key, first run's value, second's); "—" where absent
    png: Path | None  # None when neither run has a history

    def to_dict(self) -> dict:
        return {"runs": [r.to_dict() for r in self.runs],
                "rows": [{"section": s, "key": k, "a": a, "b": b, "differs": a != b} for s, k, a, b in self.rows],
                "png": str(self.png) if self.png else None}


def compare_runs(a: str, b: str, project: str | os.PathLike = "runs",
                 output: str | os.PathLike | None = None) -> Comparison:
    """Runs `a` and `b` (names in `project`, or paths): config.json and the figures side by side,
    and both runs' curves in one PNG (default: compare_A_B.png beside the first run)."""
    if output is not None and not Path(output).parent.is_dir():
        raise TlcliError(f"--output: the folder '{Path(output).parent}' does not exist.")
    paths = find_run(a, project), find_run(b, project)
    if paths[0].resolve() == paths[1].resolve():
        raise TlcliError(f"--compare needs two different runs; '{a}' and '{b}' are the same folder.")
    records = tuple(read_run(path) for path in paths)
    sides = [_comparable(path, record) for path, record in zip(paths, records)]
    rows = []
    for section in ("config", "metrics"):
        keys = dict.fromkeys([*sides[0][section], *sides[1][section]])
        rows += [(section, key, sides[0][section].get(key, MISSING), sides[1][section].get(key, MISSING))
                 for key in keys]
    histories = [read_history(path / "history.csv") for path in paths]
    png = None
    if any(histories):
        from tlcli.plots import plot_compare_curves

        png = Path(output) if output else paths[0].parent / f"compare_{paths[0].name}_{paths[1].name}.png"
        plot_compare_curves([(label, history) for label, history in zip((a, b), histories)], png)
    return Comparison(records, rows, png)


def _comparable(run: Path, record: RunRecord) -> dict[str, dict[str, str]]:
    """{"config": {key: text}, "metrics": {key: text}} for one run, nested values as dotted keys."""
    ignored: list[str] = []  # unreadable files are already in the record's problems
    config = read_json(run / "config.json", ignored) or {}
    metrics = read_json(run / "metrics.json", ignored) or {}
    evaluation = read_json(run / "eval" / "metrics.json", ignored) or {}
    figures = {"status": record.status, "val_accuracy": record.val_accuracy, "epochs": record.epochs,
               "training_seconds": record.seconds, "exports": record.exports}
    figures.update({f"eval.{key}": evaluation[key] for key in EVAL_FIGURES if key in evaluation})
    figures.update({key: value for key, value in _flatten(metrics).items() if key != "val_accuracy"})
    return {"config": {k: _show(v) for k, v in _flatten(config).items()},
            "metrics": {k: _show(v) for k, v in figures.items()}}


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value) -> str:
    """A value as the table shows it; rows differ when these texts do (0.4 and 0.40000001 agree)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value) or MISSING
    return str(value)
