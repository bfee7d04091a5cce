"""Folder health, for `tlcli check`: images per class and split, imbalance, unreadable, tiny,
oblong and greyscale images, classes short of validation images.

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
    images and classes short of validation images; "warnings" has one line for each problem."""
    ok, warnings = decoded["ok"], []
    counts = {name: {split: 0 for split in SPLIT_NAMES if getattr(folder, split) is not None}
              for name in folder.class_names}
    for i, f in enumerate(files):
        counts[f["class"]][f["split"]] += int(ok[i])
    unreadable = [{"path": printable_path(files[i]["path"]), "reason": reason}
                  for i, reason in sorted(decoded["failed"].items())]
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable file(s), which training skips")

    train = {name: c["train"] for name, c in counts.items()}
    largest, smallest = max(train, key=train.get), min(train, key=train.get)
    imbalance = train[largest] / max(train[smallest], 1)
    if imbalance > IMBALANCE:
        warnings.append(f"imbalanced classes: {largest} has {train[largest]} training images, "
                        f"{smallest} {train[smallest]} (--class-weights auto, the default, compensates)")

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
        grey[f["class"]] += int(ok[i] and decoded["grey"][i])
    totals = {name: sum(c.values()) for name, c in counts.items()}
    n_grey, n_ok = sum(grey.values()), int(ok.sum())
    for name in folder.class_names:
        rest = (n_grey - grey[name]) / max(n_ok - totals[name], 1)
        if totals[name] and grey[name] / totals[name] - rest > 0.25:
            warnings.append(f"{grey[name]} of {totals[name]} {name} images are greyscale, against {rest:.0%} "
                            "of the others: colour alone may tell the class")

    few_val = {name: c.get("val", 0) for name, c in counts.items() if c.get("val", 0) < MIN_VAL}
    if few_val:
        shown = ", ".join(f"{name} ({n})" for name, n in few_val.items())
        warnings.append(f"{len(few_val)} class(es) with under {MIN_VAL} validation images: {shown}")
    return {"classes": counts, "imbalance": round(imbalance, 2), "unreadable": unreadable, "tiny": tiny,
            "extreme_aspect": oblong, "grey": {"count": n_grey, "share": round(n_grey / max(n_ok, 1), 4),
                                                "by_class": grey},
            "few_val": few_val, "val_split": val_split,
            "warnings": warnings}
