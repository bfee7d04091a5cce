"""Folder health, for `tlcli check`: images per class (or per label) and split, imbalance,
unreadable, tiny, oblong and greyscale images, classes short of validation images.

A multi-label dataset is counted label by label: an image counts once under each of its labels.
Reads the findings of tlcli.check's decode pass: decodes nothing itself.
"""

from __future__ import annotations

from tlcli.data import SPLIT_NAMES, ImageFolder
from tlcli.images import printable_path

TINY_SIDE = 64  # px: the shorter side below which little is left for a backbone (224 px) to see
EXTREME_ASPECT = 3.0  # longer side / shorter side: squashed 3x into the square input
IMBALANCE = 3.0  # largest class / smallest class (training images) worth a warning
MIN_VAL = 5  # validation images per class below which its accuracy is noise


def folder_health(folder: ImageFolder, files: list[dict], headers: list, decoded: dict, val_split: float) -> dict:
    """Class counts per split, imbalance, unreadable files, tiny and oddly shaped images, grey
    images and classes short of validation images; "warnings" has one line for each problem.
    `files`: a dict per image with its "split" and "labels" (one, or a multi-label image's)."""
    ok, warnings = decoded["ok"], []
    multi = folder.multi_label
    counts = {name: {split: 0 for split in SPLIT_NAMES if getattr(folder, split) is not None}
              for name in folder.class_names}
    for i, f in enumerate(files):
        for label in f["labels"]:
            counts[label][f["split"]] += int(ok[i])
    unreadable = [{"path": printable_path(files[i]["path"]), "reason": reason}
                  for i, reason in sorted(decoded["failed"].items())]
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable file(s), which training skips")

    train = {name: c["train"] for name, c in counts.items()}
    largest, smallest = max(train, key=train.get), min(train, key=train.get)
    imbalance = train[largest] / max(train[smallest], 1)
    if imbalance > IMBALANCE and multi:
        warnings.append(f"imbalanced labels: {largest} is on {train[largest]} training images, {smallest} on "
                        f"{train[smallest]} (--class-weights auto, the default, weighs each label's positives)")
    elif imbalance > IMBALANCE:
        warnings.append(f"imbalanced classes: {largest} has {train[largest]} training images, "
                        f"{smallest} {train[smallest]} (--class-weights auto, the default, compensates)")
    n_train = sum(int(ok[i]) for i, f in enumerate(files) if f["split"] == "train")
    everywhere = [name for name, n in train.items() if multi and n and n == n_train]
    if everywhere:
        warnings.append(f"label(s) on every training image, which the model can only learn to always say: "
                        f"{', '.join(everywhere)}")

    tiny, oblong = [], []
    for i, size in enumerate(headers):
        if size is None or not ok[i]:
            continue
        short, long = min(size), max(size)
        row = {"path": printable_path(files[i]["path"]), "width": size[0], "height": size[1]}
        if short < TINY_SIDE:
            tiny.append(row)
        if long > EXTREME_ASPECT * max(short, 1):
            oblong.append(row)
    if tiny:
        warnings.append(f"{len(tiny)} tiny image(s), under {TINY_SIDE} px on the shorter side")
    if oblong:
        warnings.append(f"{len(oblong)} image(s) more than {EXTREME_ASPECT:g} times as long as wide "
                        "(squashed into the square input)")

    grey = {name: 0 for name in folder.class_names}
    for i, f in enumerate(files):
        for label in f["labels"]:
            grey[label] += int(ok[i] and decoded["grey"][i])
    totals = {name: sum(c.values()) for name, c in counts.items()}
    n_grey, n_ok = int((ok & decoded["grey"]).sum()), int(ok.sum())
    for name in folder.class_names:
        # Every image either has the label or not, so the others are the readable images without it.
        rest = (n_grey - grey[name]) / max(n_ok - totals[name], 1)
        if totals[name] and grey[name] / totals[name] - rest > 0.25:
            warnings.append(f"{grey[name]} of {totals[name]} {name} images are greyscale, against {rest:.0%} "
                            f"of the others: colour alone may tell the {'label' if multi else 'class'}")

    few_val = {name: c.get("val", 0) for name, c in counts.items() if c.get("val", 0) < MIN_VAL}
    if few_val:
        shown = ", ".join(f"{name} ({n})" for name, n in few_val.items())
        warnings.append(f"{len(few_val)} label(s) on under {MIN_VAL} validation images (each label's threshold is "
                        f"tuned on them): {shown}" if multi else
                        f"{len(few_val)} class(es) with under {MIN_VAL} validation images: {shown}")
    health = {"classes": counts, "imbalance": round(imbalance, 2), "unreadable": unreadable, "tiny": tiny,
              "extreme_aspect": oblong, "grey": {"count": n_grey, "share": round(n_grey / max(n_ok, 1), 4),
                                                 "by_class": grey},
              "few_val": few_val, "val_split": val_split, "warnings": warnings}
    if multi:
        health["labels_per_image"] = labels_per_image(files, ok)
    return health


def labels_per_image(files: list[dict], ok) -> dict[str, int]:
    """{"1": readable images with one label, "2": with two, …}; "0" counts images whose labels
    are all unknown to the training rows (a val or test row's)."""
    found: dict[int, int] = {}
    for i, f in enumerate(files):
        if ok[i]:
            found[len(f["labels"])] = found.get(len(f["labels"]), 0) + 1
    return {str(n): found[n] for n in sorted(found)}
