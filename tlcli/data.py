"""From a folder of images to labelled, split arrays and tf.data pipelines.

Finding the files and splitting them live here; decoding one file lives in `tlcli.images`.
DATA_DIR may be a local folder or a URL TensorFlow's file systems read (`gs://…`); local paths
are Paths, URLs stay strings (see `tlcli.fs`).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcli import fs
from tlcli.errors import TlcliError
from tlcli.images import load_images
from tlcli.labelfile import Columns, read_label_file
from tlcli.multilabel import multi_hot, rarest_labels
# Until every caller imports them from tlcli.images:
from tlcli.images import ImageError, load_image, printable_path  # noqa: F401

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class Split:
    """The images of one split: `paths[i]` has label `labels[i]`; `images[i]` is it decoded and
    resized, when the split was loaded into memory (load_folder), else None (streamed)."""

    paths: list[str]
    labels: np.ndarray  # int32 class indices, (n,); multi-label: float32 multi-hot rows, (n, classes)
    images: np.ndarray | None = None  # uint8, (n, size, size, 3)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class ImageFolder:
    """A loaded DATA_DIR: class names, train/val(/test) splits and what was skipped."""

    class_names: list[str]
    train: Split
    val: Split
    test: Split | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)
    drawn_from: str | None = None  # where --val-split drew val from: "all", "train", or None (val given)
    multi_label: bool = False  # each image has a set of labels (a label file's), not one class


# ---------------------------------------------------------------- discovery (no decoding)


def is_image_file(path: Path | str) -> bool:
    """Whether `path` (a Path, a file name or a URL) is named as an image file, and not hidden."""
    name = path.name if isinstance(path, Path) else fs.name(path)
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def find_images(folder: Path | str) -> list[Path] | list[str]:
    """Image files under `folder`, recursively, in a stable order; hidden entries are ignored.

    Symlinked folders are followed once: a folder already visited (by its real path) is not
    entered again, nor is a link up to a folder that contains `folder` (it would bring in the
    other classes' images under this one), so link loops end. A URL's files come as URLs.
    """
    if fs.is_url(folder):
        urls = []
        for root, dirs, files in fs.walk(folder, IMAGE_EXTENSIONS):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            urls += [fs.join(root, f) for f in files if is_image_file(f)]
        return urls
    found, seen = [], set()
    start = os.path.realpath(folder)
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or (real != start and os.path.commonpath([real, start]) == real):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if is_image_file(Path(f))]
    return found


def class_folders(folder: Path | str) -> list[Path] | list[str]:
    """The folders directly in `folder`, sorted, hidden ones left out."""
    if fs.is_url(folder):
        return [fs.join(folder, d) for d in fs.listdir(folder, IMAGE_EXTENSIONS)[0] if not d.startswith(".")]
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(data_dir: Path | str) -> dict[str, Path] | dict[str, str]:
    """{"all": DATA_DIR} for class folders, or {"train": …, "val": …, "test": …} for splits."""
    data_dir = fs.as_path(data_dir)
    with _reading(data_dir):
        if not fs.is_dir(data_dir):
            raise TlcliError(f"'{data_dir}' is not a folder of images.")
        subdirs = {fs.name(p).lower(): p for p in class_folders(data_dir)}
        if "train" in subdirs and class_folders(subdirs["train"]):
            layout = {"train": subdirs["train"]}
            for name, aliases in (("val", ("val", "valid", "validation")), ("test", ("test",))):
                for alias in aliases:
                    if alias in subdirs:
                        layout[name] = subdirs[alias]
                        break
            return layout
    return {"all": data_dir}


@contextlib.contextmanager
def _reading(where):
    """An OSError while listing `where` (a bucket out of reach, a folder without permission) as
    a one-line TlcliError."""
    try:
        yield
    except OSError as error:
        raise TlcliError(f"cannot read {error.filename or where}: {error.strerror or error}") from None


def discover(folder: Path | str) -> tuple[dict[str, list], list[str]]:
    """{class name: image files} of the class folders in `folder`, and warnings for empty ones."""
    classes, notes = {}, []
    for sub in class_folders(folder):
        files = find_images(sub)
        if files:
            classes[fs.name(sub)] = files
        else:
            notes.append(f"class folder '{fs.name(sub)}' has no images; left out.")
    return classes, notes


def expand_path(arg: str) -> tuple[list[str], str | None]:
    """The image files one PATH argument names, local or a URL, and the problem when it names none.

    A named file is always taken, whatever its extension; a folder gives its image files
    (recursively); a glob gives the image files it matches, and those of folders it matches.
    """
    arg = str(arg)
    if fs.is_dir(arg):
        images = [str(p) for p in find_images(arg)]
        return images, None if images else "folder has no image files"
    if fs.exists(arg):
        return [arg], None
    if not _GLOB_CHARS & set(arg):
        return [], "file not found"
    images = []
    for match in fs.glob(arg):
        if fs.is_dir(match):
            images += [str(p) for p in find_images(match)]
        elif is_image_file(match):
            images.append(match)
    return images, None if images else "no image file matches this pattern"


def is_file_list(data_dir: Path | str) -> bool:
    """Whether DATA_DIR names a label file (CSV, JSON, JSON lines, or a file list `tlcli check
    --write-clean` wrote) instead of a folder."""
    return not fs.is_dir(data_dir) and fs.exists(data_dir) and not is_image_file(data_dir)


# ---------------------------------------------------------------- splitting


def stratified_split(labels: list[int], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices for train and val, the same fraction of every class in val (at least one each)."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        members = [i for i, l in enumerate(labels) if l == label]
        rng.shuffle(members)
        n_val = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(len(members) * val_split)))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def find_folder(data_dir: str | os.PathLike, val_split: float = 0.2, seed: int = 0,
                classes: list[str] | None = None, columns: Columns | None = None,
                label_delimiter: str | None = None, multi_label: bool = False) -> ImageFolder:
    """Find and split every image file of DATA_DIR (either layout, or a label file) without decoding any.

    The result holds paths and labels only (`images` is None): training streams the files
    through the decoder, so memory does not grow with the dataset. `classes` restricts the
    classes to those (a resumed run's); any of them missing is an error. `columns`: those a
    label file's paths and labels are in, when not found by name. A label file's bad rows are
    in `skipped` from the start. `label_delimiter` and `multi_label`: a multi-label file (see
    tlcli.labelfile); its classes are every label of its (train) rows, and its splits keep each
    image's rarest label in proportion.
    """
    data_dir = fs.as_path(data_dir)
    notes: list[str] = []
    found: dict[str, dict[str, list]] = {}
    skipped: list[tuple[str, str]] = []
    listed = is_file_list(data_dir)
    if listed:
        table = read_label_file(data_dir, columns, label_delimiter, multi_label)
        found, skipped, notes, multi_label = table.by_split(), table.skipped, list(table.notes), table.multi_label
        label_sets = table.label_sets()
    elif multi_label or label_delimiter:
        raise TlcliError(f"{data_dir} is a folder, one label an image (its class folder): --multi-label and "
                         "--label-delimiter need a label file (CSV, JSON) listing each image's labels.")
    else:
        layout = detect_layout(data_dir)
        with _reading(data_dir):
            for split, folder in layout.items():
                found[split], split_notes = discover(folder)
                notes += [f"{split}/: {n}" if split != "all" else n for n in split_notes]
            stray = [f for f in fs.listdir(data_dir, IMAGE_EXTENSIONS)[1] if is_image_file(f)]
        if stray:
            notes.append(f"{len(stray)} image(s) at the top of {data_dir} are not in a class folder; ignored.")
    main = "all" if "all" in found else "train"
    class_names = sorted(found.get(main, {}))
    if classes is not None:
        missing = sorted(set(classes) - set(class_names))
        if missing:
            kind = "class(es)" if listed else "class folder(s)"
            raise TlcliError(f"{kind} {', '.join(missing)} are no longer in {data_dir}.")
        class_names = list(classes)
    if listed:
        where = f"the train rows of {data_dir}" if main == "train" else str(data_dir)
    else:
        where = (f"{data_dir}/train" if main == "train" else str(data_dir)) + " (one folder per class)"
    _need_two_classes(class_names, where)

    def make_split(split: str) -> Split:
        if multi_label:
            sets = label_sets.get(split, {})
            return Split([str(p) for p in sets], multi_hot(list(sets.values()), class_names))
        labels, paths = [], []
        for label, cls in enumerate(class_names):
            files = found.get(split, {}).get(cls, [])
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        return Split(paths, np.asarray(labels, np.int32))

    for split in ("val", "test"):
        unknown = sorted(set(found.get(split, {})) - set(class_names))
        if unknown:
            what = f"{split} rows' classes not in the train rows" if listed else f"{split}/ classes not in train/"
            notes.append(f"{what} are ignored: {', '.join(unknown)}.")

    def split_off(split: Split) -> tuple[Split, Split]:
        keys = rarest_labels(split.labels) if multi_label else split.labels.tolist()
        train_idx, val_idx = stratified_split(keys, val_split, seed)
        return _subset(split, train_idx), _subset(split, val_idx)

    if main == "all":
        (train, val), test = split_off(make_split("all")), None
    else:
        train = make_split("train")
        if "val" in found:
            val = make_split("val")
        else:
            train, val = split_off(train)
        test = make_split("test") if "test" in found else None
    drawn_from = "all" if main == "all" else None if "val" in found else "train"
    return ImageFolder(class_names, train, val, test, list(skipped), notes, drawn_from, multi_label)


def drop_unusable(folder: ImageFolder, failed: dict[str, str], drop_classes: bool = True) -> ImageFolder:
    """`folder` without the files that failed to decode ({path: reason}, listed in `skipped`) and,
    with `drop_classes`, without classes left with no usable training image (labels renumbered,
    with a warning). A worker that holds one shard of the files keeps every class: the others
    may have images of it."""
    def keep(split: Split | None) -> Split | None:
        if split is None:
            return None
        rows = [i for i, p in enumerate(split.paths) if p not in failed]
        return _subset(split, rows)

    train, val, test = keep(folder.train), keep(folder.val), keep(folder.test)
    notes = list(folder.warnings)
    if not drop_classes:
        present = set(range(len(folder.class_names)))
    elif folder.multi_label:
        present = set(np.flatnonzero(train.labels.sum(0) > 0).tolist())
    else:
        present = set(train.labels.tolist())
    kept = [label for label in range(len(folder.class_names)) if label in present]
    for label in sorted(set(range(len(folder.class_names))) - present):
        notes.append(f"class '{folder.class_names[label]}' has no usable images; left out.")
    class_names = [folder.class_names[label] for label in kept]
    _need_two_classes(class_names, "DATA_DIR (one folder per class)")
    if len(kept) < len(folder.class_names):
        renumber = {old: new for new, old in enumerate(kept)}
        train, val, test = (None if s is None else _relabel(s, renumber) for s in (train, val, test))
    skipped = folder.skipped + [(printable_path(p), reason) for p, reason in failed.items()]
    if len(val) == 0:
        raise TlcliError("no validation images: add a val/ folder or more images per class.")
    return ImageFolder(class_names, train, val, test, skipped, notes, folder.drawn_from, folder.multi_label)


def load_folder(data_dir: str | os.PathLike, size: int, val_split: float = 0.2, seed: int = 0,
                progress=None, columns: Columns | None = None, label_delimiter: str | None = None,
                multi_label: bool = False) -> ImageFolder:
    """Find, split and decode every image of DATA_DIR into memory, skipping unusable ones.

    For the small sets evaluate and export check on; training streams instead (`find_folder`).
    Both split before decoding and drop failed files after, so they agree on every split.
    """
    folder = find_folder(data_dir, val_split, seed, columns=columns, label_delimiter=label_delimiter,
                         multi_label=multi_label)
    splits = [s for s in (folder.train, folder.val, folder.test) if s is not None]
    paths = [p for s in splits for p in s.paths]
    if progress:
        progress.start(len(paths))
    arrays, ok, skipped = load_images(paths, size, progress.advance if progress else None)
    failed = {paths[i]: reason for i, reason in _failures(paths, ok, skipped)}
    decoded = {paths[i]: row for row, i in enumerate(ok)}
    folder = drop_unusable(folder, failed)
    for split in (folder.train, folder.val, folder.test):
        if split is not None:
            split.images = arrays[[decoded[p] for p in split.paths]] if len(split) else \
                np.zeros((0, size, size, 3), np.uint8)
    return folder


def _failures(paths: list[str], ok: list[int], skipped: list[tuple[str, str]]):
    """(index, reason) of each path load_images could not decode, in order."""
    failed = sorted(set(range(len(paths))) - set(ok))
    return [(i, reason) for i, (_, reason) in zip(failed, skipped)]


def _need_two_classes(class_names: list[str], where: str) -> None:
    if len(class_names) < 2:
        raise TlcliError(f"need at least 2 classes with usable images in {where}; found {len(class_names)}.")


def _relabel(split: Split, renumber: dict[int, int]) -> Split:
    if split.labels.ndim == 2:  # multi-label: the lost classes' columns go; every image stays
        return Split(split.paths, split.labels[:, sorted(renumber)], split.images)
    rows = [i for i, label in enumerate(split.labels) if int(label) in renumber]
    kept = _subset(split, rows)
    kept.labels = np.asarray([renumber[int(label)] for label in kept.labels], np.int32)
    return kept


def _subset(split: Split, indices: list[int]) -> Split:
    images = None if split.images is None else split.images[indices]
    return Split([split.paths[i] for i in indices], split.labels[np.asarray(indices, np.int64)], images)


def targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """What the model learns to output for `labels`: one-hot rows for class indices, the
    multi-hot rows of a multi-label split as they are (float32 either way)."""
    if labels.ndim == 2:
        return labels.astype(np.float32)
    return np.eye(n_classes, dtype=np.float32)[labels]


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights that make every class count as much as a balanced dataset's: n / (k * count)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


# ---------------------------------------------------------------- tf.data


def make_dataset(split: Split, n_classes: int, batch_size: int, shuffle: bool, seed: int = 0,
                 size: int | None = None):
    """Batches of (uint8 images, one-hot labels), shuffled each epoch when `shuffle`; a
    multi-label split's batches carry its multi-hot rows.

    A split held in memory is indexed; a streamed one (images None) is decoded batch by batch at
    `size`, in parallel, a few batches ahead: memory holds batches, not the dataset.
    """
    import tensorflow as tf

    images, labels = split.images, split.labels
    paths = np.asarray(split.paths, dtype=object)

    def gather(indices):
        if images is not None:
            return images[indices], labels[indices]
        decoded, ok, _ = load_images(list(paths[indices]), size)  # a file gone since caching is left out
        return decoded, labels[indices][ok]

    ds = tf.data.Dataset.range(len(split))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    size = images.shape[1] if images is not None else size

    multi = labels.ndim == 2

    def lookup(indices):
        x, y = tf.numpy_function(gather, [indices], (tf.uint8, tf.float32 if multi else tf.int32), stateful=False)
        x.set_shape((None, size, size, 3))
        y.set_shape((None, n_classes) if multi else (None,))
        return x, y if multi else tf.one_hot(y, n_classes)

    return ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
