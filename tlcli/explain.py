"""`tlcli explain`: Grad-CAM heatmaps of where a classifier finds the evidence for a class.

For each image, `tlcli.gradcam` computes the heatmap on exactly what the model sees and
`tlcli.overlay` draws it over the original image; this module runs that over the images PATH
names, names the PNGs, and makes the contact sheet. `with_heatmaps` serves `evaluate --explain`.
The Keras model is opened through `tlcli.runtime`, as every command opens its model.
Nothing here imports TensorFlow at module level: `tlcli explain --help` stays instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcli.errors import TlcliError, unknown_name
from tlcli.gradcam import Explainer
from tlcli.images import ImageError, load_images
from tlcli.overlay import SHEET_TILE, contact_sheet, draw_caption, load_original, overlay, readable, save_png
from tlcli.rundir import ModelRef, owning_run
from tlcli.runtime import open_model

SHEET = "contact_sheet.png"
SHEET_MAX = 100  # images on the contact sheet at most (the per-image PNGs have them all)


def require_keras(ref: ModelRef) -> None:
    """Grad-CAM needs the model's gradients: only the Keras model has them. Say where it is."""
    if ref.kind == "keras":
        return
    what = {"tflite": "a .tflite model", "savedmodel": "a SavedModel", "onnx": "a .onnx model"}.get(
        ref.kind, f"a {ref.kind} model")
    run = owning_run(ref)
    hint = f"--model {run}" if run is not None and (run / "model.keras").is_file() else "--model RUN or a .keras file"
    raise TlcliError(f"explanations need the Keras model (they use its gradients); '{ref.path}' is {what}. "
                     f"Use {hint}.")


def open_explainer(ref: ModelRef) -> Explainer:
    """Load the Keras model of `ref` (a run or .keras file) for Grad-CAM."""
    require_keras(ref)
    return Explainer(open_model(ref).model, ref.labels)


def class_index(name: str | None, labels: list[str]) -> int | None:
    """--class (--label) NAME as an index into the model's labels (exact, then case-insensitive)."""
    if name is None:
        return None
    if name in labels:
        return labels.index(name)
    folded = [label for label in labels if label.lower() == name.lower()]
    if len(folded) == 1:
        return labels.index(folded[0])
    raise unknown_name("class", name, labels, f"The model knows: {', '.join(labels)}.")


# ---------------------------------------------------------------- the command


@dataclass
class ExplainResult:
    """What `explain_files` wrote, per input, and the heatmaps it drew."""

    rows: list[dict]  # per input, in order: path, label, confidence, predicted, predicted_confidence, heatmap, error
    out_dir: Path
    sheet: Path | None
    layer: str  # the feature map explained
    grid: tuple[int, int]  # its (height, width) at the model's input size
    span: tuple  # the image's edges in heatmap cells, ((top, bottom), (left, right)): see Explainer.span
    cams: list = field(default_factory=list)  # per row: the heatmap at grid resolution, or None

    @property
    def failed(self) -> int:
        return sum(1 for r in self.rows if r["error"])


def default_output(ref: ModelRef) -> Path:
    """<run>/explain/ for a model in a run folder, else ./explain."""
    run = owning_run(ref)
    return (run / "explain") if run is not None else Path("explain")


def _names(paths: list[str], out_dir: Path) -> list[str]:
    """An output PNG name per input, after its file name, unique (case-insensitively), never the
    contact sheet's and never one of the inputs themselves (when --output is their folder)."""
    inputs = {os.path.normcase(os.path.abspath(p)) for p in paths}
    used = {SHEET.lower()}
    names = []
    for p in paths:
        stem = Path(p).stem[:120] or "image"
        n = 1
        while True:
            name = f"{stem}.png" if n == 1 else f"{stem}-{n}.png"
            target = os.path.normcase(os.path.abspath(out_dir / name))
            if name.lower() not in used and target not in inputs:
                break
            n += 1
        used.add(name.lower())
        names.append(name)
    return names


def explain_files(ref: ModelRef, args: list[str], class_name: str | None = None, output: str | Path | None = None,
                  batch_size: int = 16, console=None, quiet: bool = False) -> ExplainResult:
    """A Grad-CAM PNG for every image PATH names (files, folders, globs, as in predict), and
    contact_sheet.png when there are several, in `output` (default: see `default_output`).

    Each heatmap is for the predicted class, or for `class_name` when given. An unreadable
    file gets a row with its error; the others are still explained. For a multi-label model the
    predicted class is the most probable label, and each row also gives the label's threshold
    and whether the image has the label (`present`).
    """
    from rich.console import Console

    from tlcli.predict import expand_paths
    from tlcli.progress import Step, make_progress

    if batch_size < 1:
        raise TlcliError("--batch-size must be at least 1.")
    require_keras(ref)
    target = class_index(class_name, ref.labels)
    items = expand_paths(args)
    explainer = open_explainer(ref)
    out_dir = Path(output) if output else default_output(ref)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TlcliError(f"cannot create '{out_dir}': {error.strerror or error}.") from None

    labels = explainer.labels
    rows = [{"path": p, "label": None, "confidence": None, "predicted": None, "predicted_confidence": None,
             "heatmap": None, "error": problem} for p, problem in items]
    cams: list = [None] * len(items)
    todo = [i for i, (_, problem) in enumerate(items) if problem is None]
    names = dict(zip(todo, _names([items[i][0] for i in todo], out_dir)))
    tiles, grid = [], (0, 0)
    with make_progress(console or Console(stderr=True), quiet or len(todo) < 2) as progress:
        step = Step(progress, "Explaining")
        step.start(len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images, ok, skipped = load_images([items[i][0] for i in batch], ref.image_size)
            unread = [i for k, i in enumerate(batch) if k not in set(ok)]
            for i, (_, reason) in zip(unread, skipped):
                rows[i]["error"] = reason
            heat, probs = explainer.explain(images, target)
            grid = heat.shape[1:] if len(heat) else grid
            for j, k in enumerate(ok):
                i = batch[k]
                tile = _write_one(rows[i], heat[j], probs[j], images[j], target, labels, out_dir / names[i],
                                  explainer.span, ref.thresholds if ref.multi_label else None)
                if tile is not None:
                    cams[i] = heat[j]
                    if len(tiles) < SHEET_MAX:
                        tiles.append(tile)
            step.advance(len(batch))
        failed = sum(1 for i in todo if rows[i]["error"])
        step.done(f"{len(todo) - failed} ok, {failed} failed" if failed else "")

    sheet = None
    if len(tiles) >= 2:
        sheet = out_dir / SHEET
        done = sum(1 for c in cams if c is not None)
        note = f"first {SHEET_MAX} of {done} images; all are in {out_dir}" if done > SHEET_MAX else ""
        contact_sheet(tiles, sheet, note)
    return ExplainResult(rows, out_dir, sheet, explainer.layer_name, tuple(int(v) for v in grid),
                         explainer.span, cams)


def _write_one(row: dict, cam, probs, model_input, target, labels, path: Path, span=None, thresholds=None):
    """Blend, caption and save one heatmap; fill `row`. Returns the contact sheet tile, or None.
    `thresholds`: a multi-label model's, one per label."""
    from PIL import Image

    if not np.isfinite(probs).all():
        row["error"] = "the model's output is not a number (a broken model?)"
        return None
    predicted = int(np.argmax(probs))
    shown = predicted if target is None else int(target)
    row.update(label=labels[shown], confidence=round(float(probs[shown]), 6), predicted=labels[predicted],
               predicted_confidence=round(float(probs[predicted]), 6))
    try:
        original = load_original(row["path"])
    except ImageError:  # readable for the model a moment ago: show what the model saw instead
        original = np.asarray(model_input, np.uint8)
    blended = overlay(readable(original), cam, span)
    lines = [f"{labels[shown]}  {probs[shown]:.1%}"]
    if thresholds is not None:
        present = bool(probs[shown] >= thresholds[shown])
        row.update(threshold=float(thresholds[shown]), present=present)
        lines.append(f"{'above' if present else 'below'} its threshold {thresholds[shown]:.2f}")
    if shown != predicted:
        lines.append(f"{'most probable' if thresholds is not None else 'predicted'}: {labels[predicted]}  "
                     f"{probs[predicted]:.1%}")
    if not np.any(cam):
        lines.append("no region raises this class's score")
    picture = Image.fromarray(blended)
    draw_caption(picture, lines)
    try:
        save_png(picture, path)
    except OSError as error:
        row["error"] = f"cannot write {path}: {error.strerror or error}"
        return None
    row["heatmap"] = str(path)
    picture = Image.fromarray(blended)  # the sheet's tile: without the caption, which goes below it
    picture.thumbnail((SHEET_TILE, SHEET_TILE), Image.LANCZOS)
    caption = [Path(row["path"]).name, lines[0]] + ([f"(pred. {labels[predicted]} {probs[predicted]:.0%})"]
                                                     if shown != predicted else [])
    return np.asarray(picture), caption


# ---------------------------------------------------------------- evaluate --explain


def with_heatmaps(classifier, labels: list[str], pixels, classes: dict[int, int]):
    """Wrap evaluate's `pixels(i)` (the model's input for error i) so it returns that image with
    its Grad-CAM heatmap for class `classes[i]` beside it."""
    explainer = Explainer(classifier, labels)

    def side_by_side(i: int) -> np.ndarray:
        image = np.asarray(pixels(i), np.uint8)
        cam, _ = explainer.explain(image[None], classes[i])
        gap = np.full((image.shape[0], max(2, image.shape[1] // 32), 3), 255, np.uint8)
        return np.concatenate([image, gap, overlay(image, cam[0], explainer.span)], axis=1)

    return side_by_side

