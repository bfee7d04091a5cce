"""Label files: a dataset's images and labels listed in a spreadsheet instead of class folders.

    read the file (CSV, a JSON list of objects, or JSON lines) -> find the path, label and split
    columns -> one LabelRow per usable row; each bad row (no path, a missing file, an empty
    label, an unknown split, a path listed twice with different labels) goes to `skipped` with
    its reason, as an unreadable image does -> {split: {class: files}} for tlcli.data

Multi-label files: a label cell may hold several labels split by a delimiter ("beach;sunset"
with --label-delimiter ';'), a JSON label may be a list, and with --multi-label a "long" file
(one row per image and label) has the rows of one image merged instead of conflicting.

Also reads the tab-separated lists that `tlcli check --write-clean` wrote before it wrote CSV.
Paths are relative to the label file's folder; absolute paths and URLs are taken as they are.
Only reads: nothing here decodes an image or imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tlcli import fs
from tlcli.errors import TlcliError, unknown_name

LIST_HEADER = "# tlcli file list"  # the first line of the lists `tlcli check --write-clean` writes
SPLITS = ("train", "val", "test")
UNSPLIT = "all"  # a row without a split value: --val-split draws val from such rows
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# Column names recognised without --path-column / --label-column, compared case-insensitively.
KNOWN_COLUMNS = {
    "path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img",
             "image_file"),
    "label": ("label", "labels", "class", "class_name", "category", "categories", "target", "tag", "tags"),
    "split": ("split", "subset", "set", "partition"),
}
JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Columns:
    """The columns the user named (--path-column, --label-column); None: found by name."""

    path: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class LabelRow:
    """One usable row: an image and what it is."""

    path: str  # absolute local path, or a URL
    # The labels of the row: one, or several when a delimiter split the cell, a JSON list held
    # them, or --multi-label merged the rows of one image; in the order first given.
    labels: tuple[str, ...]
    split: str  # train, val, test, or UNSPLIT
    where: str  # "labels.csv, line 4": for messages


@dataclass
class LabelTable:
    """A label file read: its usable rows, its bad rows as (path, reason), and notes to print."""

    source: str
    columns: dict[str, str | None]  # {"path": column, "label": column, "split": column or None}
    rows: list[LabelRow]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Multi-label: asked for (--multi-label), or some row has several labels.
    multi_label: bool = False

    def by_split(self) -> dict[str, dict[str, list[str]]]:
        """{split: {class: image files}}, in file order: each row under its label (its first), or
        in a multi-label table under every one of its labels."""
        found: dict[str, dict[str, list[str]]] = {}
        for row in self.rows:
            for label in row.labels if self.multi_label else row.labels[:1]:
                found.setdefault(row.split, {}).setdefault(label, []).append(row.path)
        return found

    def label_sets(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """{split: {image file: its labels}}, in file order."""
        found: dict[str, dict[str, tuple[str, ...]]] = {}
        for row in self.rows:
            found.setdefault(row.split, {})[row.path] = row.labels
        return found


def read_label_file(path, columns: Columns | None = None, label_delimiter: str | None = None,
                    multi_label: bool = False) -> LabelTable:
    """Read the label file `path` (.csv, .json, .jsonl, or an older tab-separated file list).

    A file that cannot be read as a whole (not CSV or JSON, no path or label column) is a
    one-line TlcliError; a bad row is only left out, with its reason in `skipped`.
    `label_delimiter` splits each label cell into labels; `multi_label` merges the rows of one
    image. The table is multi-label when asked, or when some row has several labels.
    """
    columns = columns or Columns()
    try:
        text = fs.read_bytes(path).decode("utf-8-sig", "replace")
    except OSError as error:
        raise TlcliError(f"cannot read {path}: {error.strerror or error}") from None
    name = fs.name(str(path))
    base = str(path).rsplit("/", 1)[0] if fs.is_url(str(path)) else str(Path(path).resolve().parent)
    suffix = os.path.splitext(name)[1].lower()
    if suffix in JSON_SUFFIXES:
        header, records, bad = _json_records(text, name)
    elif suffix in JSONL_SUFFIXES:
        header, records, bad = _jsonl_records(text, name)
    elif _is_tab_list(text):
        return _read_tab_list(text, str(path), base)
    else:
        header, records, bad = _csv_records(text, name)
    chosen = {kind: _column(kind, getattr(columns, kind, None), header, name) for kind in KNOWN_COLUMNS}
    rows, skipped = [], list(bad)
    for where, record in records:
        row = _row(record, chosen, where, base, label_delimiter)
        if isinstance(row, LabelRow):
            rows.append(row)
        else:
            skipped.append(row)
    rows, conflicts, notes = _without_duplicates(rows, merge=multi_label)
    rows, split_notes = _settle_splits(rows)
    multi_label = multi_label or any(len(row.labels) > 1 for row in rows)
    hint = [] if label_delimiter else _delimiter_hint(rows)
    table = LabelTable(str(path), chosen, rows, skipped + conflicts, notes + split_notes + hint, multi_label)
    if not rows:
        raise TlcliError(_nothing_usable(table, base))
    return table


# ---------------------------------------------------------------- formats


def _csv_records(text: str, name: str) -> tuple[list[str], list, list]:
    """The header and (where, {column: cell}) of each row of a CSV file. Lines starting with #
    before the header are comments (the ones `tlcli check --write-clean` writes); the
    delimiter is a comma, or a semicolon or tab when the header has more of those."""
    lines = text.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and (not lines[skip].strip() or lines[skip].startswith("#")):
        skip += 1
    if skip == len(lines):
        raise TlcliError(f"{name} is empty: a label file's first row names its columns, e.g. path,label.")
    first = lines[skip]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO("".join(lines[skip:]), newline=""), delimiter=delimiter)
    try:
        header = [cell.strip() for cell in next(reader)]
        records = []
        for cells in reader:
            if any(cell.strip() for cell in cells):
                records.append((f"{name}, line {reader.line_num + skip}", dict(zip(header, cells))))
    except csv.Error as error:
        raise TlcliError(f"{name}, line {reader.line_num + skip}: not CSV ({error}).") from None
    return header, records, []


def _json_records(text: str, name: str) -> tuple[list[str], list, list]:
    """A JSON list of objects: the keys seen (in order) and (where, object) of each entry."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise TlcliError(f"{name} is not valid JSON: {error}.") from None
    if not isinstance(data, list):
        raise TlcliError(f"{name} must hold a list of objects such as {{\"path\": \"a.jpg\", \"label\": \"cat\"}}.")
    return _objects([(f"{name}, entry {i}", item) for i, item in enumerate(data, 1)])


def _jsonl_records(text: str, name: str) -> tuple[list[str], list, list]:
    """JSON lines: one object a line; a line that is not one is a bad row, not a bad file."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append((f"{name}, line {number}", json.loads(line)))
            except ValueError:
                entries.append((f"{name}, line {number}", None))  # as bad as a line that is not an object
    return _objects(entries)


def _objects(entries: list) -> tuple[list[str], list, list]:
    header, records, bad = {}, [], []
    for where, item in entries:
        if isinstance(item, dict):
            header.update(dict.fromkeys(str(key) for key in item))
            records.append((where, {str(key): value for key, value in item.items()}))
        else:
            bad.append((where, "not a JSON object"))
    return list(header), records, bad


def _is_tab_list(text: str) -> bool:
    """Whether `text` is a file list as `tlcli check --write-clean` wrote before CSV."""
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            parts = line.split("\t")
            return len(parts) > 1 and parts[0] in (UNSPLIT, *SPLITS)
    return text.startswith(LIST_HEADER)


def _read_tab_list(text: str, path: str, base: str) -> LabelTable:
    """One image a line, `split<TAB>class<TAB>path`; lines starting with # are comments. Read
    strictly, as it always was: a bad line is an error."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] not in (UNSPLIT, *SPLITS) or not parts[1] or not parts[2]:
            raise TlcliError(f"{path}, line {number}: expected split<TAB>class<TAB>path, the split being "
                             f"all, train, val or test.")
        split, name, file = parts
        rows.append(LabelRow(_absolute(file, base), (name,), split, f"{fs.name(path)}, line {number}"))
    if not rows:
        raise TlcliError(f"{path} is neither a folder of images nor a file list with any image in it.")
    splits = {row.split for row in rows}
    if UNSPLIT in splits and len(splits) > 1:
        raise TlcliError(f"{path} mixes split 'all' with {', '.join(sorted(splits - {UNSPLIT}))}: "
                         "use one or the other.")
    return LabelTable(path, {"path": None, "label": None, "split": None}, rows)


# ---------------------------------------------------------------- columns and rows


def _column(kind: str, given: str | None, header: list[str], name: str) -> str | None:
    """The column holding `kind` (path, label, split): the one named by the user, else the first
    with a known name; a missing path or label column is an error."""
    if given is not None:
        matches = [c for c in header if c == given] or [c for c in header if c.lower() == given.lower()]
        if not matches:
            raise unknown_name(f"--{kind}-column", given, header, f"Columns of {name}: {', '.join(header) or 'none'}.")
        return matches[0]
    for known in KNOWN_COLUMNS[kind]:
        for column in header:
            if column.strip().lower() == known:
                return column
    if kind == "split":
        return None
    raise TlcliError(f"{name} has no {kind} column (columns: {', '.join(header) or 'none'}): name it with "
                     f"--{kind}-column, or make the first row name the columns, e.g. path,label.")


def _row(record: dict, columns: dict, where: str, base: str,
         delimiter: str | None = None) -> LabelRow | tuple[str, str]:
    """The row as a LabelRow, or (path, reason) when it cannot be used."""
    def cell(kind):
        value = record.get(columns[kind]) if columns[kind] else None
        return "" if value is None else str(value).strip()

    file, split = cell("path"), cell("split").lower()
    if not file:
        return where, "no path"
    path = _absolute(file, base)
    if split and split not in SPLIT_VALUES:
        return path, f"unknown split '{cell('split')}': train, val or test ({where})"
    labels = _labels(record.get(columns["label"]), delimiter)
    if not labels:
        return path, f"empty label ({where})"
    if not fs.is_url(path) and not os.path.lexists(path):  # URLs: the decoder says, without a call per row
        return path, f"file not found ({where})"
    return LabelRow(path, labels, SPLIT_VALUES.get(split, UNSPLIT), where)


def _labels(value, delimiter: str | None) -> tuple[str, ...]:
    """The labels of a label cell: split at `delimiter`, or the items of a JSON list; blanks and
    repeats left out, the rest in the order given."""
    if value is None:
        return ()
    parts = [str(item) for item in value] if isinstance(value, list) else [str(value)]
    if delimiter:
        parts = [piece for part in parts for piece in part.split(delimiter)]
    return tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))


def _delimiter_hint(rows: list[LabelRow]) -> list[str]:
    """A note when labels look like several joined ('beach;sunset') but no delimiter was given."""
    for mark in (";", "|"):
        joined = [label for row in rows for label in row.labels if mark in label]
        if joined:
            return [f"{len(joined)} label(s) hold '{mark}' (e.g. '{joined[0]}'), each read as one label: "
                    f"--label-delimiter '{mark}' splits them into several."]
    return []


def _absolute(file: str, base: str) -> str:
    if fs.is_url(file):
        return file
    if fs.is_url(base):
        return fs.join(base, file)
    return os.path.normpath(os.path.join(base, os.path.expanduser(file)))


def _without_duplicates(rows: list[LabelRow], merge: bool = False) -> tuple[list[LabelRow], list[tuple[str, str]],
                                                                            list[str]]:
    """One row per file. A file listed again with the same label and split is kept once (noted);
    listed with different labels or splits, it is ambiguous: every row of it is left out. With
    `merge` (multi-label, a "long" file: one row per label), the rows of a file in one split are
    one row with all their labels; different splits stay a conflict."""
    by_path: dict[str, list[LabelRow]] = {}
    for row in rows:
        by_path.setdefault(row.path, []).append(row)
    kept, conflicts, repeats, merged = [], [], 0, 0
    for path, group in by_path.items():
        labels = sorted({", ".join(sorted(r.labels)) for r in group})
        splits = sorted({r.split for r in group})
        if len(splits) > 1 or (len(labels) > 1 and not merge):
            what = f"labels: {'; '.join(labels)}" if len(labels) > 1 and not merge else f"splits: {', '.join(splits)}"
            conflicts += [(path, f"listed {len(group)} times with different {what} ({r.where})") for r in group]
        elif len(labels) > 1:
            every = tuple(dict.fromkeys(label for r in group for label in r.labels))
            kept.append(LabelRow(path, every, group[0].split, group[0].where))
            merged += 1
        else:
            kept.append(group[0])
            repeats += len(group) - 1
    notes = [f"{repeats} row(s) repeat an earlier row's file and label; each file is used once."] if repeats else []
    if merged:
        notes.append(f"{merged} image(s) are listed on several rows; --multi-label gives each all of its rows' labels.")
    return kept, conflicts, notes


def _settle_splits(rows: list[LabelRow]) -> tuple[list[LabelRow], list[str]]:
    """Rows without a split value train when others have one (val then drawn from them by
    --val-split unless some rows say val); with none given, every row is UNSPLIT."""
    given = {row.split for row in rows} - {UNSPLIT}
    loose = sum(1 for row in rows if row.split == UNSPLIT)
    if not given or not loose:
        return rows, []
    rows = [LabelRow(r.path, r.labels, "train", r.where) if r.split == UNSPLIT else r for r in rows]
    drawn = "" if "val" in given else ", and --val-split draws val from them"
    return rows, [f"{loose} row(s) without a split value are training rows{drawn}."]


def skipped_count(skipped: int, rows: int) -> str:
    """"3 unreadable file(s) and 2 bad row(s) of the label file": of `skipped`, `rows` were rows."""
    parts = [f"{n} {what}" for n, what in ((skipped - rows, "unreadable file(s)"),
                                           (rows, "bad row(s) of the label file")) if n]
    return " and ".join(parts)


def reason_counts(skipped: list[tuple[str, str]]) -> str:
    """"empty label: 1, file not found: 2": how many rows were left out for each reason."""
    reasons: dict[str, int] = {}
    for _, why in skipped:
        key = why.split(" (")[0].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return ", ".join(f"{key}: {n}" for key, n in sorted(reasons.items()))


def _nothing_usable(table: LabelTable, base: str) -> str:
    if not table.skipped:
        return f"{table.source} lists no images."
    return (f"no usable row in {table.source} ({reason_counts(table.skipped)}); relative paths are read from "
            f"the file's folder, {base}.")
