"""The labelled images `tlcli evaluate` measures a model on: one split of DATA_DIR, each image's
label an index into the *model's* labels, matched by class name (never by folder order: a
disagreement is an error rather than a silent shift of indices).

DATA_DIR may be a URL TensorFlow reads (gs://…): it stays a string throughout (`tlcli.fs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from tlcli import fs
from tlcli.data import SPLIT_NAMES, detect_layout, discover, find_folder, is_file_list, load_folder
from tlcli.errors import TlcliError
from tlcli.images import ImageError, load_image
from tlcli.labelfile import Columns, read_label_file
from tlcli.multilabel import multi_hot
from tlcli.progress import Step, make_progress
from tlcli.rundir import ModelRef, owning_run

SPLITS = (*SPLIT_NAMES, "all")


@dataclass
class EvalSet:
    """The images of one split with labels as indices into the *model's* labels (a multi-label
    model's: (n, labels) 0/1, in the model's label order)."""

    split: str
    paths: list[str]
    labels: np.ndarray
    images: np.ndarray | None = None  # already decoded (a re-made split), else decoded while predicting
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bad_rows: int = 0  # how many of `skipped` are a label file's bad rows (the first ones)


def load_eval_set(data_dir: str | Path, ref: ModelRef, labels: list[str], size: int, split: str | None = None,
                  console: Console | None = None, quiet: bool = True, columns: Columns | None = None) -> EvalSet:
    """Find the images of `split` in DATA_DIR (either training layout, or a label file) and label
    them by class name.

    Default split: test/ if present, else val/. A class-folder DATA_DIR is evaluated whole
    (split "all"); `--split val` or `train` there (or `val` when there is no val/ folder) re-makes
    the run's own split from its config.json (same val_split and seed as training). A label file
    is split by its rows' split values in the same way (see `_listed_split`).
    """
    data_dir = fs.as_path(data_dir)
    if split is not None and split not in SPLITS:
        raise TlcliError(f"--split must be one of {', '.join(SPLITS)}; not '{split}'.")
    if is_file_list(data_dir):
        return _listed_split(data_dir, ref, labels, size, split, columns)
    layout = detect_layout(data_dir)
    folders = sorted(layout) if "all" not in layout else []
    if split is None:
        split = "all" if "all" in layout else "test" if "test" in layout else "val"
    if split == "all" and "all" not in layout:
        raise TlcliError(f"{data_dir} has {'/, '.join(folders)}/ folders: choose one with --split {'|'.join(folders)}.")
    if split == "test" and "test" not in layout:
        raise TlcliError(f"{data_dir} has no test/ folder; use --split val (or all, for a folder of classes).")
    folder = layout.get(split) or (layout["all"] if split == "all" else None)
    if folder is None:
        return _remade_split(data_dir, layout, ref, labels, size, split, console, quiet)

    classes, notes = discover(folder)
    where = fs.name(data_dir) if split == "all" else f"{fs.name(data_dir)}/{fs.name(folder)}"
    found = _labelled(classes, labels, size, where)
    if split == "all":
        notes.append(f"evaluating every image in {data_dir} (it has no val/ or test/ folder); "
                     "--split val re-makes the run's validation split.")
    return EvalSet(split, found.paths, found.labels, skipped=found.skipped, notes=notes + found.notes)


def _labelled(classes: dict[str, list], labels: list[str], size: int, where: str) -> EvalSet:
    """{class name: files} as paths and model label indices, in class order (split left blank),
    without the unknown classes that hold no readable image."""
    skipped, notes = _drop_unusable_classes(classes, labels, size)
    index = _match_labels(list(classes), labels, where)
    paths = [str(p) for name in sorted(classes) for p in classes[name]]
    y = np.asarray([index[name] for name in sorted(classes) for _ in classes[name]], np.int32)
    return EvalSet("", paths, y, skipped=skipped, notes=notes)


def _listed_split(data_file, ref: ModelRef, labels: list[str], size: int, split: str | None,
                  columns: Columns | None) -> EvalSet:
    """One split of a label file. Default: its test rows; every row when it has no split column
    (as a folder of classes), else its val rows. A val split that --val-split drew (no row says
    val) is re-made as the model's run drew it, from its config.json."""
    config, columns = _as_the_run_read_it(ref, data_file, columns)
    table = read_label_file(data_file, columns)
    found, notes = table.by_split(), list(table.notes)
    split, parts = _pick_split(found, split, data_file, notes)
    if parts is None:
        classes = _drawn_split(data_file, ref, config, split, columns, notes)
    else:
        classes: dict[str, list] = {}
        for part in parts:
            for name, files in part.items():
                classes.setdefault(name, []).extend(files)
    result = _labelled(classes, labels, size, f"the {split} rows of {fs.name(str(data_file))}")
    return EvalSet(split, result.paths, result.labels, skipped=table.skipped + result.skipped,
                   notes=notes + result.notes, bad_rows=len(table.skipped))


def _pick_split(found: dict, split: str | None, data_file, notes: list[str]) -> tuple[str, list | None]:
    """(the split, the parts of `found` ({split: rows}) that make it up), None for the parts of a
    split the run drew itself (--val-split). Default: test rows; every row when none has a split
    value, else val rows."""
    if split is None:
        split = "test" if "test" in found else "all" if "all" in found else "val"
        notes.append(f"evaluating the {split} rows of {data_file}" if split != "all" else
                     f"evaluating every row of {data_file} (none has a split value); --split val re-makes the "
                     "run's validation split.")
    if split == "all":
        return split, list(found.values())
    if split == "test" or "val" in found:
        if split not in found:
            raise TlcliError(f"{data_file} has no {split} rows; use --split val (the run's validation rows) or all.")
        return split, [found[split]]
    return split, None


def _as_the_run_read_it(ref: ModelRef, data_file, columns: Columns | None) -> tuple[dict, Columns | None]:
    """(the model's run's config.json or {}, the label file's columns): the ones given, else the
    run's own when it trained on this very file."""
    run = owning_run(ref)
    config = json.loads((run / "config.json").read_text(encoding="utf-8")) if run is not None else {}
    if columns in (None, Columns()) and config.get("data_dir") and _same_folder(config["data_dir"], data_file):
        columns = Columns(config.get("path_column"), config.get("label_column"))  # the run read it so
    return config, columns


def _drawn_split(data_file, ref: ModelRef, config: dict, split: str, columns: Columns | None,
                 notes: list[str], label_delimiter: str | None = None, multi_label: bool = False) -> dict:
    """{class: files} of the train or val split the model's run (`config`) drew from a label file's
    rows; with `multi_label`, {file: its labels}."""
    if not config:
        raise TlcliError(f"{data_file} has no val rows and '{ref.path}' belongs to no run folder whose "
                         "config.json could re-make the split; use --split all or test.")
    folder = find_folder(data_file, float(config.get("val_split", 0.2)), int(config.get("seed", 0)), columns=columns,
                         label_delimiter=label_delimiter, multi_label=multi_label)
    part = folder.train if split == "train" else folder.val
    classes: dict = {}
    for path, label in zip(part.paths, part.labels):
        if multi_label:  # label: the image's multi-hot row
            classes[path] = tuple(folder.class_names[c] for c in np.flatnonzero(label))
        else:
            classes.setdefault(folder.class_names[int(label)], []).append(path)
    trained_on = config.get("data_dir")
    if trained_on and not _same_folder(trained_on, data_file):
        notes.append(f"the run was trained on {trained_on}; its {split} split is re-made on {data_file} instead.")
    notes.append(f"{split} split re-made from {data_file} with the run's val_split and seed.")
    return classes


# ---------------------------------------------------------------- multi-label


def load_multilabel_set(data_dir: str | Path, ref: ModelRef, labels: list[str], size: int, split: str | None = None,
                        console: Console | None = None, quiet: bool = True, columns: Columns | None = None,
                        label_delimiter: str | None = None) -> EvalSet:
    """The images of `split` with every label each has, for a multi-label model: an EvalSet whose
    `labels` are (n, labels) 0/1 in the model's label order.

    A label file is read as its run read it (its label delimiter, unless `label_delimiter` is
    given, and columns), each image with all its labels; its splits as for a single-label model.
    A folder of classes gives each image its folder's label alone.
    """
    data_dir = fs.as_path(data_dir)
    if split is not None and split not in SPLITS:
        raise TlcliError(f"--split must be one of {', '.join(SPLITS)}; not '{split}'.")
    if not is_file_list(data_dir):
        found = load_eval_set(data_dir, ref, labels, size, split, console, quiet, columns)
        truth = np.zeros((len(found.labels), len(labels)), np.float32)
        truth[np.arange(len(found.labels)), found.labels] = 1
        return EvalSet(found.split, found.paths, truth, found.images, found.skipped,
                       found.notes + ["each image has one label here: its folder's."], found.bad_rows)
    config, columns = _as_the_run_read_it(ref, data_dir, columns)
    delimiter = label_delimiter or config.get("label_delimiter")
    table = read_label_file(data_dir, columns, label_delimiter=delimiter, multi_label=True)
    notes = list(table.notes)
    split, parts = _pick_split(table.label_sets(), split, data_dir, notes)
    if parts is None:
        rows = _drawn_split(data_dir, ref, config, split, columns, notes, delimiter, multi_label=True)
    else:
        rows = {path: found for part in parts for path, found in part.items()}
    where = f"the {split} rows of {fs.name(str(data_dir))}"
    unknown = sorted({label for found in rows.values() for label in found} - set(labels))
    if unknown:
        hint = "" if delimiter else " Several labels in one cell? Give --label-delimiter."
        raise TlcliError(f"{where} have labels the model does not know: {', '.join(unknown)}. "
                         f"The model knows: {', '.join(labels)}.{hint}")
    absent = [label for label in labels if not any(label in found for found in rows.values())]
    if absent:
        notes.append(f"no image of {where} has {', '.join(absent)}: no AP for {'it' if len(absent) == 1 else 'them'}.")
    return EvalSet(split, list(rows), multi_hot(list(rows.values()), labels), skipped=list(table.skipped),
                   notes=notes, bad_rows=len(table.skipped))


def _remade_split(data_dir: Path | str, layout: dict, ref: ModelRef, labels: list[str], size: int, split: str,
                  console: Console | None, quiet: bool) -> EvalSet:
    """The run's own train/val split of DATA_DIR, re-made exactly as `tlcli train` made it."""
    run = owning_run(ref)
    if run is None:
        raise TlcliError(f"{data_dir} has no {split}/ folder and '{ref.path}' belongs to no run folder "
                         "whose config.json could re-make the split; use --split all or a folder with val/.")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    main = layout.get("all") or layout["train"]
    found = discover(main)[0]
    _drop_unusable_classes(found, labels, size)
    _match_labels(list(found), labels, str(main))  # fail before decoding the whole folder
    notes = []
    trained_on = config.get("data_dir")
    if trained_on and not _same_folder(trained_on, data_dir):
        notes.append(f"the run was trained on {trained_on}; its {split} split is re-made on {data_dir} instead.")
    with make_progress(console or Console(stderr=True), quiet) as progress:
        loading = Step(progress, "Loading images")
        data = load_folder(data_dir, size, float(config.get("val_split", 0.2)), int(config.get("seed", 0)), loading)
        loading.done()
    part = data.train if split == "train" else data.val
    index = _match_labels(data.class_names, labels, str(data_dir))
    y = np.asarray([index[data.class_names[label]] for label in part.labels], np.int32)
    notes.append(f"{split} split re-made from {data_dir} with the run's val_split and seed.")
    if data.skipped:  # unreadable before any split was made: in neither split, as in training
        notes.append(f"{len(data.skipped)} unreadable file(s) in {data_dir} left out, as in training.")
    return EvalSet(split, part.paths, y, part.images, notes=notes + data.warnings)


def _same_folder(a, b) -> bool:
    """Whether two DATA_DIRs name one folder: resolved locally, compared as text for URLs."""
    if fs.is_url(str(a)) or fs.is_url(str(b)):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _drop_unusable_classes(classes: dict, labels: list[str], size: int) -> tuple[list, list[str]]:
    """Leave out, as training did, the class folders the model does not know that hold no
    readable image (a folder of broken files is no reason to refuse the rest). Changes `classes`;
    returns their files as (path, reason) and a note for each.
    """
    skipped, notes = [], []
    for name in sorted(set(classes) - set(labels)):
        reasons = []
        for path in classes[name]:
            try:
                load_image(path, size)
                break  # a usable image: a class the model really does not know
            except ImageError as error:
                reasons.append((str(path), str(error)))
        else:
            del classes[name]
            skipped += reasons
            notes.append(f"class '{name}' has no usable images; left out, as in training.")
    return skipped, notes


def _match_labels(found: list[str], labels: list[str], where: str) -> dict[str, int]:
    """{class name: model label index}; an error when DATA_DIR and the model disagree on the classes."""
    unknown = sorted(set(found) - set(labels))
    missing = [name for name in labels if name not in set(found)]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"classes the model does not know: {', '.join(unknown)}")
        if missing:
            parts.append(f"model classes with no images there: {', '.join(missing)}")
        raise TlcliError(f"{where} does not match the model's labels ({'; '.join(parts)}). "
                         f"The model knows: {', '.join(labels)}.")
    return {name: labels.index(name) for name in found}
