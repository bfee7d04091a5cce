"""What `tlcli check` writes and prints: check.json, the contact sheets, the clean file list and
the summary tables. Pillow and rich only; the findings come from `tlcli.check`.
"""

from __future__ import annotations

import csv
import io
import os
import shlex
import time
from pathlib import Path

import numpy as np

from tlcli import fs
from tlcli.data import SPLIT_NAMES
from tlcli.errors import TlcliError
from tlcli.images import ImageError, printable_path
from tlcli.labelfile import LIST_HEADER
from tlcli.overlay import SHEET_TILE, contact_sheet, load_original
from tlcli.rundir import owning_run, write_json, write_text

JSON, DUPLICATES, SUSPECTS = "check.json", "duplicates.png", "suspects.png"
SHEET_MAX = 64  # images on a contact sheet at most; check.json lists them all


def output_folder(data_dir, output, model=None) -> Path:
    """--output, or <run>/check for a --model in a run folder, or ./check; created. Never inside
    DATA_DIR: its pictures would be taken for images of a class."""
    if output is None:
        run = owning_run(model) if model is not None else None
        output = run / "check" if run is not None else Path("check")
    out = Path(output)
    if not fs.is_url(str(data_dir)) and os.path.isdir(data_dir):
        data, target = os.path.realpath(data_dir), os.path.realpath(out)
        if os.path.commonpath([data, target]) == data:
            raise TlcliError(f"the output folder '{out}' is inside DATA_DIR, where its pictures would be taken "
                             "for images of a class: choose another with --output.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TlcliError(f"cannot create '{out}': {error.strerror or error}.") from None
    return out


def write_outputs(result, write_clean=None) -> None:
    """The contact sheets (a stale one from an earlier check is removed when there is nothing to
    show) and, when asked, the clean list. check.json is written last, by `save_json`."""
    for name, tiles in ((DUPLICATES, duplicate_tiles(result)), (SUSPECTS, suspect_tiles(result))):
        path = result.out_dir / name
        if tiles:
            note = f"first {SHEET_MAX} of {len(tiles)} images; {JSON} lists them all" if len(tiles) > SHEET_MAX else ""
            contact_sheet([(_thumbnail(file), lines) for file, lines in tiles[:SHEET_MAX]], path, note)
            result.written[name] = str(path)
        elif path.is_file() and (result.out_dir / JSON).is_file():  # ours, from an earlier check
            path.unlink()
    if write_clean is not None:
        result.written["clean_list"] = str(write_clean_list(result, write_clean))


def save_json(result) -> Path:
    path = result.out_dir / JSON
    result.written[JSON] = str(path)
    write_json(path, result.to_dict())
    return path


# ---------------------------------------------------------------- contact sheets


def _shown_path(path: str, data_dir: str) -> str:
    """A file's path relative to DATA_DIR (a label file's folder) when inside it: the part that
    tells images apart."""
    base = data_dir if fs.is_url(data_dir) or os.path.isdir(data_dir) else os.path.dirname(os.path.abspath(data_dir))
    if not fs.is_url(path) and os.path.isdir(base):
        relative = os.path.relpath(path, base)
        if not relative.startswith(".."):
            return printable_path(relative)
    return printable_path(path)


def _thumbnail(path: str) -> np.ndarray:
    try:
        return load_original(path, SHEET_TILE)
    except ImageError:  # unreadable now, or a URL: a grey square keeps the caption in its place
        return np.full((SHEET_TILE // 2, SHEET_TILE // 2, 3), 200, np.uint8)


def duplicate_tiles(result) -> list[tuple[str, list[str]]]:
    """(file, caption) for each member of each duplicate group: exact groups first, leakage
    first within each; the caption says the group's number, how and where."""
    order = {"leakage": 0, "cross-class": 1, "within-class": 2}
    groups = [("exact", g) for g in result.exact] + [("near", g) for g in result.near]
    groups.sort(key=lambda item: (item[0] != "exact", min(order[k] for k in item[1]["kinds"])))
    tiles = []
    for number, (how, group) in enumerate(groups, 1):
        for i in group["members"]:
            f = result.files[i]
            tiles.append((f["path"], [_shown_path(f["path"], result.data_dir), f"{f['split']}: {f['class']}",
                                      f"#{number} {how}, {', '.join(group['kinds'])}"]))
    return tiles


def suspect_tiles(result) -> list[tuple[str, list[str]]]:
    """(file, caption) for each likely label error, surest first: the class it is filed under
    and the likely one, with their probabilities; or a multi-label image's labels and each label
    in doubt, given or not, with its probability."""
    tiles = []
    for s in result.suspects:
        f = result.files[s["index"]]
        if "disputed" in s:
            lines = [f"labelled: {f['class'] or 'none'}", *(disputed_text(d) for d in s["disputed"][:3])]
        else:
            lines = [f"filed: {s['given']} {s['p_given']:.0%}", f"likely: {s['likely']} {s['p_likely']:.0%}"]
        tiles.append((f["path"], [_shown_path(f["path"], result.data_dir), *lines]))
    return tiles


def disputed_text(doubt: dict, threshold: bool = False) -> str:
    """"square: labelled, 3%" or "triangle: not labelled, 97%": a label in doubt and how sure
    the evidence is; with `threshold`, the label's threshold too."""
    bar = f" (threshold {doubt['threshold']:.0%})" if threshold else ""
    return f"{doubt['label']}: {'labelled' if doubt['given'] else 'not labelled'}, {doubt['probability']:.0%}{bar}"


# ---------------------------------------------------------------- the clean list


def left_out(result) -> dict[int, str]:
    """{file index: why} of the files the clean list leaves out: unreadable ones, likely label
    errors, every copy of a picture filed under two classes, and all copies but one of any
    other duplicate (the one in train/, else val/: the validation images lose the copy), and
    multi-label val or test images with none of the training rows' labels (training ignores
    them, as it ignores a single-label image of a class training lacks)."""
    why = {i: "unreadable" for i in result.unreadable}
    why.update({i: "no label of the training rows" for i, f in enumerate(result.files) if not f["labels"]})
    rank = {split: k for k, split in enumerate(SPLIT_NAMES)}
    for how, groups in (("exact", result.exact), ("near", result.near)):
        for group in groups:
            members = group["members"]
            if "cross-class" in group["kinds"]:
                for i in members:
                    why.setdefault(i, f"{how} duplicate " + ("with different labels" if result.multi_label
                                                             else "filed under two classes"))
                continue
            keep = min(members, key=lambda i: (rank[result.files[i]["split"]], i))
            for i in members:
                if i != keep:
                    why.setdefault(i, f"{how} duplicate of {printable_path(result.files[keep]['path'])}")
    for s in result.suspects:
        likely = "; ".join(map(disputed_text, s["disputed"])) if "disputed" in s else f"looks like {s['likely']}"
        why.setdefault(s["index"], f"likely label error: {likely}")
    return why


def check_list_target(path) -> Path:
    """--write-clean's file, refused in one line when it exists and is not a tlcli file list
    (an image of the user's, say): checked before the work, and again before writing."""
    path = Path(path)
    if path.exists():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                ours = f.readline().startswith(LIST_HEADER)
        except OSError:
            ours = False
        if not ours:
            raise TlcliError(f"--write-clean: '{path}' exists and is not a tlcli file list; not overwritten.")
    return path


def write_clean_list(result, path) -> Path:
    """The files to train on, as a label file (tlcli.labelfile): two comment lines, then CSV
    with the columns path,label,split; every file but those `left_out` says; absolute paths.
    Only a missing file or an earlier file list is overwritten."""
    path = check_list_target(path)
    dropped = left_out(result)
    joiner = clean_list_delimiter(result)
    # A val split drawn by --val-split goes back to the rows it was drawn from: train re-draws it.
    drawn = {"val": result.drawn_from} if result.drawn_from else {}
    rows = []
    for i, f in enumerate(result.files):
        if i not in dropped:
            name = f["path"] if fs.is_url(f["path"]) else os.path.abspath(f["path"])
            split = "" if result.drawn_from == "all" else drawn.get(f["split"], f["split"])
            rows.append([printable_path(name), joiner.join(f["labels"]) if joiner else f["class"], split])
    reasons: dict[str, int] = {}
    for why in dropped.values():
        key = why.split(" of ")[0].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    summary = ", ".join(f"{key} {n}" for key, n in sorted(reasons.items())) or "nothing"
    text = io.StringIO()
    text.write(f"{LIST_HEADER}: a label file (CSV after these comment lines); `tlcli train` takes it in place "
               "of DATA_DIR\n")
    text.write(f"# written by tlcli check {printable_path(result.data_dir)} on {time.strftime('%Y-%m-%d %H:%M')}: "
               f"{len(rows)} of {len(result.files)} images; left out: {summary}"
               + (f"; labels joined by '{joiner}': {train_command(result, path)}" if joiner else "") + "\n")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    write_text(path, text.getvalue())
    return path


def clean_list_delimiter(result) -> str | None:
    """What joins a multi-label image's labels in the clean list (None: one label a row): the
    delimiter DATA_DIR was read with, else the first of ; | + / that no label holds."""
    if not result.multi_label:
        return None
    if result.label_delimiter:
        return result.label_delimiter
    return next((mark for mark in ";|+/" if not any(mark in name for name in result.class_names)), ";")


def train_command(result, path) -> str:
    """`tlcli train LIST`, with what reads a multi-label list back: its delimiter, and
    --multi-label when no image kept has two labels (the delimiter alone would not turn it on)."""
    joiner = clean_list_delimiter(result)
    if joiner is None:
        return f"tlcli train {path}"
    dropped = left_out(result)
    several = any(len(f["labels"]) > 1 for i, f in enumerate(result.files) if i not in dropped)
    return f"tlcli train {path} --label-delimiter {shlex.quote(joiner)}" + ("" if several else " --multi-label")


# ---------------------------------------------------------------- the terminal


def summary(result) -> list:
    """What `tlcli check` prints (rich renderables and markup lines): the findings, images per
    class, the surest suspects, each problem in a line, notes, and what was written where."""
    from rich.markup import escape
    from rich.table import Table

    kind = "label" if result.multi_label else "class"
    table = Table(title=escape(f"Check of {result.data_dir}: {len(result.files)} images, {len(result.class_names)} "
                               + ("labels (multi-label)" if result.multi_label else "classes")),
                  show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, groups in (("exact duplicates", result.exact), ("near-duplicates", result.near)):
        kinds = {k: sum(1 for g in groups if k in g["kinds"]) for k in ("leakage", "cross-class", "within-class")}
        detail = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        table.add_row(name, f"{len(groups)} group(s)" + (f" ({detail})" if detail else ""))
    # A multi-label file is judged by a model alone (tlcli.suspects.NO_MODEL_MULTILABEL).
    unjudged = result.features == "none" or (result.multi_label and not result.features.startswith("model: "))
    judged = f"{len(result.suspects)}  [dim](by {escape(result.features)})[/]"
    if unjudged:
        judged = "not checked" + ("  [dim](multi-label: needs --model)[/]" if result.multi_label else "")
    table.add_row("likely label errors", judged)
    h = result.health
    table.add_row("unreadable files", str(len(h["unreadable"])))
    table.add_row("tiny / oblong images", f"{len(h['tiny'])} / {len(h['extreme_aspect'])}")
    table.add_row("greyscale images", f"{h['grey']['count']} ({h['grey']['share']:.0%})")
    table.add_row(f"imbalance (largest / smallest {kind})", f"{h['imbalance']:g}")
    if "labels_per_image" in h:
        table.add_row("labels per image", labels_per_image_text(h["labels_per_image"]))
    table.add_row("seconds", f"{result.seconds.get('total', 0):.1f}")

    classes = Table(title=f"Images per {kind} (readable)", title_justify="left")
    splits = list(next(iter(h["classes"].values())))
    for column in [kind, *splits, "grey"]:
        classes.add_column(column, justify="left" if column == kind else "right")
    for name, counts in h["classes"].items():
        classes.add_row(escape(name), *(str(counts[s]) for s in splits), str(h["grey"]["by_class"][name]))
    parts = [table, classes]
    if result.suspects:
        parts.append(_suspects_table(result))
    for issue in result.issues():
        parts.append(f"[yellow]*[/] {escape(issue)}")
    if not result.issues():
        parts.append("[green]No duplicates, likely label errors or other problems found.[/]")
    for note in result.notes:
        parts.append(f"[dim]note:[/] {escape(note)}")
    pictures = [name for name in (DUPLICATES, SUSPECTS) if name in result.written]
    parts.append(escape(f"Wrote {', '.join([JSON] + pictures)} to {result.out_dir}"))
    if "clean_list" in result.written:
        kept = len(result.files) - len(left_out(result))
        parts.append(escape(f"Wrote {result.written['clean_list']}: {kept} of {len(result.files)} images; "
                            f"train on it with: {train_command(result, result.written['clean_list'])}"))
    return parts


def labels_per_image_text(counts: dict[str, int]) -> str:
    """"1.9 on average (33 with 1, 49 with 2)" from {"1": 33, "2": 49}."""
    images = sum(counts.values())
    mean = sum(int(n) * count for n, count in counts.items()) / max(images, 1)
    return f"{mean:.1f} on average ({', '.join(f'{count} with {n}' for n, count in counts.items())})"


def _suspects_table(result):
    """The surest likely label errors: each file's class and the likely one, or a multi-label
    image's labels, the labels in doubt and the labels the evidence gives it."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Surest likely label errors (all {len(result.suspects)} in {JSON})", title_justify="left")
    by_label = "disputed" in result.suspects[0]  # a multi-label model judges even one label an image so
    columns = ("file", "labelled", "in doubt", "likely labels") if by_label else ("file", "filed under", "likely")
    for column in columns:
        table.add_column(column, overflow="fold")
    for s in result.suspects[:10]:
        f = result.files[s["index"]]
        if "disputed" in s:
            cells = [f["class"] or "none", "\n".join(disputed_text(d, threshold=True) for d in s["disputed"]),
                     ", ".join(s["likely"]) or "none"]
        else:
            cells = [f"{s['given']} {s['p_given']:.0%}", f"{s['likely']} {s['p_likely']:.0%}"]
        table.add_row(escape(_shown_path(f["path"], result.data_dir)), *map(escape, cells))
    return table
