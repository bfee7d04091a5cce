"""From a folder of images to labelled, split arrays and tf.data pipelines.

Finding the files and splitting them live here; decoding one file lives in `tlcli.images`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcli.errors import TlcliError
from tlcli.images import load_images
# Until every caller imports them from tlcli.images:
from tlcli.images import ImageError, load_image, printable_path  # noqa: F401

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Images of one split, decoded and resized: `images[i]` has label `labels[i]`."""

    paths: list[str]
    labels: np.ndarray  # int32 class indices
    images: np.ndarray  # uint8, (n, size, size, 3)

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


# ---------------------------------------------------------------- discovery (no decoding)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order; hidden entries are ignored.

    Symlinked folders are followed once: a folder already visited (by its real path) is not
    entered again, nor is a link up to a folder that contains `folder` (it would bring in the
    other classes' images under this one), so link loops end.
    """
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


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(data_dir: Path) -> dict[str, Path]:
    """{"all": DATA_DIR} for class folders, or {"train": …, "val": …, "test": …} for splits."""
    if not data_dir.is_dir():
        raise TlcliError(f"'{data_dir}' is not a folder of images.")
    subdirs = {p.name.lower(): p for p in class_folders(data_dir)}
    if "train" in subdirs and class_folders(subdirs["train"]):
        layout = {"train": subdirs["train"]}
        for name, aliases in (("val", ("val", "valid", "validation")), ("test", ("test",))):
            for alias in aliases:
                if alias in subdirs:
                    layout[name] = subdirs[alias]
                    break
        return layout
    return {"all": data_dir}


def discover(folder: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """{class name: image files} of the class folders in `folder`, and warnings for empty ones."""
    classes, notes = {}, []
    for sub in class_folders(folder):
        files = find_images(sub)
        if files:
            classes[sub.name] = files
        else:
            notes.append(f"class folder '{sub.name}' has no images; left out.")
    return classes, notes


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


def load_folder(data_dir: str | os.PathLike, size: int, val_split: float = 0.2, seed: int = 0,
                progress=None) -> ImageFolder:
    """Find, decode and split every image of DATA_DIR (either layout), skipping unusable ones."""
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    notes: list[str] = []
    found: dict[str, dict[str, list[Path]]] = {}
    for split, folder in layout.items():
        found[split], split_notes = discover(folder)
        notes += [f"{split}/: {n}" if split != "all" else n for n in split_notes]
    stray = [p.name for p in data_dir.iterdir() if p.is_file() and is_image_file(p)]
    if stray:
        notes.append(f"{len(stray)} image(s) at the top of {data_dir} are not in a class folder; ignored.")

    main = "all" if "all" in found else "train"
    # Decode everything once, then keep only classes with usable training images.
    flat = [(split, cls, p) for split, classes in found.items() for cls, files in classes.items() for p in files]
    if progress:
        progress.start(len(flat))
    arrays, ok, skipped = load_images([p for _, _, p in flat], size, progress.advance if progress else None)
    usable: dict[str, dict[str, list[int]]] = {}
    for row, i in enumerate(ok):
        split, cls, _ = flat[i]
        usable.setdefault(split, {}).setdefault(cls, []).append(row)
    class_names = sorted(usable.get(main, {}))
    for cls in sorted(found.get(main, {})):
        if cls not in usable.get(main, {}):
            notes.append(f"class '{cls}' has no usable images; left out.")
    if len(class_names) < 2:
        where = f"{data_dir}/train" if main == "train" else str(data_dir)
        raise TlcliError(
            f"need at least 2 classes with usable images in {where} (one folder per class); "
            f"found {len(class_names)}."
        )

    def make_split(split: str, classes: list[str]) -> Split:
        rows, labels, paths = [], [], []
        for label, cls in enumerate(class_names):
            if cls in classes:
                for row in usable.get(split, {}).get(cls, []):
                    rows.append(row)
                    labels.append(label)
                    paths.append(str(flat[ok[row]][2]))
        return Split(paths, np.asarray(labels, np.int32), arrays[rows])

    for split in ("val", "test"):
        unknown = sorted(set(usable.get(split, {})) - set(class_names))
        if unknown:
            notes.append(f"{split}/ classes not in train/ are ignored: {', '.join(unknown)}.")
    if main == "all":
        everything = make_split("all", class_names)
        train_idx, val_idx = stratified_split(everything.labels.tolist(), val_split, seed)
        train, val = _subset(everything, train_idx), _subset(everything, val_idx)
        test = None
    else:
        train = make_split("train", class_names)
        if "val" in usable:
            val = make_split("val", class_names)
        else:
            train_idx, val_idx = stratified_split(train.labels.tolist(), val_split, seed)
            train, val = _subset(train, train_idx), _subset(train, val_idx)
        test = make_split("test", class_names) if "test" in usable else None
    if len(val) == 0:
        raise TlcliError("no validation images: add a val/ folder or more images per class.")
    return ImageFolder(class_names, train, val, test, skipped, notes)


def _subset(split: Split, indices: list[int]) -> Split:
    return Split([split.paths[i] for i in indices], split.labels[indices], split.images[indices])


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights that make every class count as much as a balanced dataset's: n / (k * count)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = len(labels) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


# ---------------------------------------------------------------- tf.data


def make_dataset(split: Split, n_classes: int, batch_size: int, shuffle: bool, seed: int = 0):
    """Batches of (uint8 images, one-hot labels), shuffled each epoch when `shuffle`."""
    import tensorflow as tf

    images, labels = split.images, split.labels

    def gather(indices):
        return images[indices], labels[indices]

    ds = tf.data.Dataset.range(len(split))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    size = images.shape[1]

    def lookup(indices):
        x, y = tf.numpy_function(gather, [indices], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((None, size, size, 3))
        y.set_shape((None,))
        return x, tf.one_hot(y, n_classes)

    return ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
