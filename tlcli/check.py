"""`tlcli check`: duplicates, train/val leakage, likely label errors and folder health, before training.

    find and split DATA_DIR as training does -> read image headers (sizes) -> one streamed decode
    pass: perceptual hashes, grey flags, features (a backbone's, or cheap pixel statistics),
    the --model's probabilities -> exact duplicates by content hash -> near-duplicates ->
    likely label errors (tlcli.suspects) -> folder health (tlcli.health) -> check.json,
    duplicates.png, suspects.png (tlcli.check_report)

A multi-label label file (--label-delimiter, --multi-label, or the --model run's setting) is
read as `tlcli train` reads it, and counted and judged label by label.

The user's files are only read. `quick_check` is the cheap part `tlcli train` runs: exact
duplicates and leakage, by file sizes and content hashes, no decoding. Nothing here imports
TensorFlow unless a backbone or a --model is used.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcli import check_report, fs, similarity, suspects
from tlcli.config import check_label_delimiter
from tlcli.data import SPLIT_NAMES, ImageFolder, find_folder, is_file_list
from tlcli.errors import TlcliError
from tlcli.health import folder_health
from tlcli.images import decode_batches
from tlcli.labelfile import reason_counts

PIXEL_SIZE = 64  # decode size when no backbone is used: pHash and pixel features need no more
FEATURES = "auto"  # auto: mobilenet_v2 ImageNet features when its weights can be had, else none
DEFAULT_BACKBONE = "mobilenet_v2"


@dataclass
class CheckResult:
    """Everything `tlcli check` found; `to_dict()` is check.json."""

    data_dir: str
    class_names: list[str]
    files: list[dict]  # per image: path, split, class (a multi-label image's labels joined), labels
    exact: list[dict]  # groups: {"kinds": [...], "members": [file index, ...]}
    near: list[dict]  # groups as exact, plus "pairs": [[i, j, pHash bits, cosine or None], ...]
    # {"index", "given", "likely", "p_given", "p_likely"}, surest first; multi-label: {"index",
    # "given", "likely" (label lists), "disputed": [{"label", "given", "probability", "threshold"}]}
    suspects: list[dict]
    health: dict
    features: str  # what the label check used: a backbone, "pixels", "model: PATH", or "none"
    unreadable: list[int] = field(default_factory=list)  # indices into files
    skipped_rows: list[tuple[str, str]] = field(default_factory=list)  # a label file's bad rows: (path, reason)
    drawn_from: str | None = None  # the folder val was drawn from by --val-split: "all", "train", or None
    notes: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    out_dir: Path | None = None
    written: dict = field(default_factory=dict)  # {"check.json": path, ...}
    multi_label: bool = False  # each image has a set of labels, judged and counted label by label
    label_delimiter: str | None = None  # what split a multi-label file's label cells, if anything did

    def issues(self) -> list[str]:
        """One line per kind of problem found, worst first; empty for a clean folder."""
        lines = []
        for name, groups in (("exact duplicate", self.exact), ("near-duplicate", self.near)):
            mixed = "with different labels" if self.multi_label else "filed under two classes"
            for kind, what in (("leakage", "across splits (leakage)"), ("cross-class", mixed),
                               ("within-class", "within one class")):
                n = sum(1 for g in groups if kind in g["kinds"])
                if n:
                    lines.append(f"{n} {name} group(s) {what}")
        if self.suspects:
            lines.append(f"{len(self.suspects)} likely label error(s)")
        return lines + self.health["warnings"]

    def to_dict(self) -> dict:
        def members(group):
            return {**group, "members": [self.files[i] for i in group["members"]]}

        return {
            "data_dir": self.data_dir, "classes": self.class_names, "n_images": len(self.files),
            "multi_label": self.multi_label, **({"label_delimiter": self.label_delimiter} if self.multi_label else {}),
            "issues": self.issues(), "features": self.features,
            "exact_duplicates": [members(g) for g in self.exact],
            "near_duplicates": [{**members(g), "pairs": [[self.files[i]["path"], self.files[j]["path"], d, c]
                                                         for i, j, d, c in g["pairs"]]} for g in self.near],
            "suspects": [{**self.files[s["index"]], **{k: v for k, v in s.items() if k not in ("index", "given")}}
                         for s in self.suspects],
            "health": self.health, "skipped_rows": [{"path": p, "reason": r} for p, r in self.skipped_rows],
            "notes": self.notes, "seconds": self.seconds,
            "out_dir": str(self.out_dir) if self.out_dir else None, "written": self.written,
        }


# ---------------------------------------------------------------- the cheap check for train


def quick_check(data_dir, folder: ImageFolder | None = None) -> str | None:
    """A one-line warning when DATA_DIR holds identical files (across splits: leakage), else None.

    Content hashes only, and only of files whose size another file shares: no decoding. `folder`
    is DATA_DIR already found (train has it); a folder on a URL is not checked (None).
    """
    folder = folder or find_folder(data_dir)
    files = _files(folder)
    if any(fs.is_url(f["path"]) for f in files):
        return None
    groups = [similarity.exact_group(files, g) for g in similarity.identical_files([f["path"] for f in files])]
    if not groups:
        return None
    leaks = sum(1 for g in groups if "leakage" in g["kinds"])
    what = f"{leaks} of them across train/val, which inflates the validation score" if leaks else \
        "none across train/val"
    return (f"{len(groups)} group(s) of identical image files in {data_dir} ({what}); "
            f"see them with: tlcli check {data_dir}")


# ---------------------------------------------------------------- the full check


def check_folder(data_dir, model=None, features: str = FEATURES, val_split: float | None = None,
                 seed: int | None = None, output=None, write_clean=None, batch_size: int = 32,
                 console=None, quiet: bool = False, columns=None, label_delimiter: str | None = None,
                 multi_label: bool = False) -> CheckResult:
    """Check DATA_DIR (class folders, or train/ val/ test/) split as training would split it.

    `model`: a ModelRef (rundir.resolve_model) whose probabilities judge the labels, and whose
    run's val_split and seed are used unless given. `features`: "auto", "pixels", "none" or a
    backbone name (ImageNet weights). Writes check.json and the contact sheets to `output`
    (default: <run>/check with a model in a run, else ./check) and, with `write_clean`, the
    list of files to keep (see check_report.write_clean_list). `columns`: a label file's
    (tlcli.labelfile.Columns), when not found by name. `label_delimiter`, `multi_label`: a
    multi-label file, read as `tlcli train` reads it (default: as the `model`'s run read its own);
    its images are counted and judged label by label.
    """
    from rich.console import Console

    from tlcli.progress import Step, make_progress

    started = time.perf_counter()
    console = console or Console(stderr=True)
    say = (lambda *a: None) if quiet else (lambda text: console.print(text, highlight=False))
    run_config = _run_config(model)
    val_split = float(run_config.get("val_split", 0.2)) if val_split is None else val_split
    seed = int(run_config.get("seed", 0)) if seed is None else seed
    label_delimiter, multi_label = _label_reading(data_dir, model, run_config, label_delimiter, multi_label)
    folder = find_folder(data_dir, val_split, seed, columns=columns, label_delimiter=label_delimiter,
                         multi_label=multi_label)
    out_dir = check_report.output_folder(data_dir, output, model)
    if write_clean is not None:
        check_report.check_list_target(write_clean)
    files = _files(folder, label_delimiter)
    paths = [f["path"] for f in files]
    notes = list(folder.warnings)
    if folder.skipped:  # a label file's bad rows
        notes.append(f"{len(folder.skipped)} row(s) of {data_dir} left out, as training leaves them out "
                     f"({reason_counts(folder.skipped)}); see check.json's skipped_rows.")
    seconds = {"find": time.perf_counter() - started}

    embedder, embed_size, features, embeds = _embedder(features, model, notes, say)
    runner = None
    if model is not None:
        from tlcli.runtime import open_model

        runner = open_model(model)
        features = f"model: {model.path}"
        if folder.multi_label and not getattr(runner, "multi_label", False):
            raise TlcliError(f"{data_dir} gives images several labels and '{model.path}' gives one class per "
                             "image: check it with a multi-label model, or without --model.")
    sizes = {embed_size or PIXEL_SIZE}
    if runner is not None:
        sizes = {runner.image_size} if embed_size is None else sizes | {runner.image_size}
    seconds["load"] = time.perf_counter() - started - seconds["find"]

    mark = time.perf_counter()
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 2) * 2)) as pool:
        headers = list(pool.map(_header, paths))
    seconds["headers"] = time.perf_counter() - mark
    mark = time.perf_counter()
    with make_progress(console, quiet) as progress:
        step = Step(progress, "Checking")
        step.start(len(paths))
        decoded = _decode_pass(paths, sorted(sizes), embed_size, embedder, embeds, runner, batch_size,
                               step.advance)
        step.done(f"{len(decoded['failed'])} unreadable" if decoded["failed"] else "")
    seconds["decode"] = time.perf_counter() - mark

    mark = time.perf_counter()
    exact = [similarity.exact_group(files, g) for g in similarity.identical_files(paths, skip=set(decoded["failed"]))]
    near = similarity.near_groups(files, decoded["ok"], decoded["hashes"], decoded["embeddings"], exact)
    seconds["duplicates"] = time.perf_counter() - mark

    mark = time.perf_counter()
    found, trained_on = [], _same_data(run_config.get("data_dir"), data_dir)
    if runner is not None and getattr(runner, "multi_label", False):
        found = suspects.from_multilabel_model(files, decoded["probs"], runner.labels, runner.thresholds,
                                               decoded["ok"], notes, trained_on)
    elif runner is not None:
        found = suspects.from_model(files, decoded["probs"], runner.labels, decoded["ok"], notes, trained_on)
    elif folder.multi_label:
        notes.append(suspects.NO_MODEL_MULTILABEL)
    elif decoded["features"] is not None:
        found = suspects.from_features(files, folder.class_names, decoded["features"], decoded["ok"], seed, notes)
    seconds["labels"] = time.perf_counter() - mark

    health = folder_health(folder, files, headers, decoded, val_split)
    result = CheckResult(str(data_dir), folder.class_names, files, exact, near, found, health, features,
                         sorted(decoded["failed"]), folder.skipped, folder.drawn_from, notes, seconds, out_dir,
                         multi_label=folder.multi_label,
                         label_delimiter=label_delimiter if folder.multi_label else None)
    mark = time.perf_counter()
    check_report.write_outputs(result, write_clean)
    seconds["write"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    result.seconds = {k: round(v, 2) for k, v in seconds.items()}
    check_report.save_json(result)
    return result


def _run_config(model) -> dict:
    """The config.json of the run `model` belongs to ({} when none): its split, its data."""
    import json

    from tlcli.rundir import owning_run

    run = owning_run(model) if model is not None else None
    try:
        return json.loads((run / "config.json").read_text(encoding="utf-8")) if run is not None else {}
    except (OSError, ValueError):
        return {}


def _label_reading(data_dir, model, run_config: dict, label_delimiter: str | None,
                   multi_label: bool) -> tuple[str | None, bool]:
    """(label delimiter, multi_label) to read DATA_DIR with: as given, else, for a label file and
    a multi-label `model`, its run's delimiter, and --multi-label when the run read a "long" file
    (no delimiter). A folder of classes gets only what was given: find_folder refuses that."""
    check_label_delimiter(label_delimiter)
    if model is None or not model.multi_label or not is_file_list(data_dir) or label_delimiter is not None:
        return label_delimiter, multi_label
    delimiter = run_config.get("label_delimiter")
    return delimiter, multi_label or (bool(run_config.get("multi_label")) and delimiter is None)


def _same_data(a, b) -> bool:
    if not a or fs.is_url(str(a)) or fs.is_url(str(b)):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _files(folder: ImageFolder, delimiter: str | None = None) -> list[dict]:
    """One row per image of every split, train first: path (as found), split, class, and labels:
    [class], or a multi-label image's labels (in class order; "class" holds them joined by
    `delimiter`, or ';')."""
    def names(label) -> list[str]:
        if np.ndim(label) == 0:
            return [folder.class_names[int(label)]]
        return [c for c, on in zip(folder.class_names, label) if on]

    rows = []
    for split in SPLIT_NAMES:
        part = getattr(folder, split)
        if part is not None:
            for path, label in zip(part.paths, part.labels):
                found = names(label)
                rows.append({"path": path, "split": split, "class": (delimiter or ";").join(found), "labels": found})
    return rows


def _header(path) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding; None when Pillow cannot tell."""
    import io

    from PIL import Image

    from tlcli.images import _quiet_pillow

    try:
        source = io.BytesIO(fs.read_bytes(path)) if fs.is_url(path) else path
        with _quiet_pillow, Image.open(source) as image:
            return image.size
    except Exception:  # noqa: BLE001 - the decode pass says why a file is unreadable
        return None


def check_features(features: str) -> None:
    """Refuse a --features value in one line, before anything is loaded."""
    if features in ("auto", "pixels", "none"):
        return
    from tlcli.backbones import BACKBONES
    from tlcli.errors import unknown_name

    if features not in BACKBONES:
        raise unknown_name("--features", features, [*BACKBONES, "auto", "pixels", "none"],
                           "Use auto, pixels, none or a backbone (see `tlcli backbones`).")
    if not BACKBONES[features].pretrained:
        raise TlcliError(f"--features {features}: this backbone has no ImageNet weights; "
                         f"use auto, pixels, none or a pretrained backbone (e.g. {DEFAULT_BACKBONE}).")


def needs_tensorflow(features: str, model=None) -> bool:
    """Whether checking with --features and `model` (a ModelRef or None) loads TensorFlow: for a
    backbone, or a Keras or SavedModel model (a .tflite or .onnx runs without it)."""
    backbone = features not in ("pixels", "none") and not (features == "auto" and model is not None)
    return backbone or (model is not None and model.kind in ("keras", "savedmodel"))


def _embedder(features: str, model, notes: list[str], say):
    """(images -> feature rows, decode size, name, whether they are a backbone's embeddings)."""
    auto = features == "auto"
    if auto:
        features = "none" if model is not None else DEFAULT_BACKBONE
    if features == "none":
        return None, None, "none", False
    if features == "pixels":
        return similarity.pixel_features, PIXEL_SIZE, "pixels", False
    from tlcli.backbones import get_spec

    check_features(features)
    spec = get_spec(features)
    say(f"Image features: {features} (ImageNet), {spec.default_size} px")
    try:
        embed = similarity.backbone_embedder(features, spec.default_size)
    except TlcliError as error:
        if not auto:
            raise
        found = re.search(r"put (\S+) in (\S+) ", str(error))
        missing = f"put {found.group(1)} in {found.group(2)}" if found else str(error).rstrip(".")
        notes.append(f"no ImageNet weights for {features}, so no label check and near-duplicates by pHash only "
                     f"({missing}; or use --model RUN, or --features pixels).")
        return None, None, "none", False
    return embed, spec.default_size, features, True


def _decode_pass(paths: list, sizes: list[int], embed_size, embedder, embeds: bool, runner, batch_size: int,
                 advance) -> dict:
    """Decode every file once per size needed, streamed in parallel, and keep per image: its
    pHash, whether it is grey, its features and the model's probabilities."""
    n = len(paths)
    out = {"ok": np.zeros(n, bool), "failed": {}, "hashes": np.zeros(n, np.uint64), "grey": np.zeros(n, bool),
           "features": None, "embeddings": None, "probs": None}
    streams = [decode_batches(paths, size, batch_size) for size in sizes]
    for batches in zip(*streams):
        for _, _, failures in batches:
            for i, reason in failures:
                out["failed"].setdefault(i, reason)
        # A file replaced between the reads of two sizes may fail in one: it is left out of both.
        common = sorted(set.intersection(*(set(indices) for indices, _, _ in batches)) - set(out["failed"]))
        images = {}
        for size, (indices, decoded, _) in zip(sizes, batches):
            position = {i: k for k, i in enumerate(indices)}
            images[size] = decoded[[position[i] for i in common]]
        first = images[sizes[0]]
        out["ok"][common] = True
        out["hashes"][common] = similarity.phash(first)
        out["grey"][common] = similarity.grey_flags(first)
        if embedder is not None and common:
            rows = np.asarray(embedder(images[embed_size]), np.float32)
            if out["features"] is None:
                out["features"] = np.zeros((n, rows.shape[1]), np.float32)
            out["features"][common] = rows
        if runner is not None and common:
            probs = np.asarray(runner.predict(images[runner.image_size]), np.float32)
            if out["probs"] is None:
                out["probs"] = np.full((n, probs.shape[1]), np.nan, np.float32)
            out["probs"][common] = probs
        advance(len(batches[0][0]) + len(batches[0][2]))
    if embeds:
        out["embeddings"] = out["features"]
    return out
