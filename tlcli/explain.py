"""`tlcli explain`: Grad-CAM heatmaps of where a classifier finds the evidence for a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the backbone's last convolutional
feature map by the mean gradient of the class's logit (the score before softmax, which does not
saturate at high confidence), sums them and keeps the positive part: the regions that raise the
class's score. The feature map is the backbone's output (every registry backbone is built
without its top, so its output is its last conv feature map), or the map just before it when
the backbone ends in a parameter-free pooling layer (VGG's block5_pool), for twice the detail.
No per-backbone configuration is needed: `feature_layer` finds it in any backbone.

The heatmap is computed on exactly what the model sees (`tlcli.images.load_image`, which squashes
the image to a square) and stretched back over the original image, each cell placed where its
receptive field is centred (`cell_geometry`: one-sided "same" padding moves it by up to half a
cell, 16 px at 224, which a plain stretch gets wrong).
Nothing here imports TensorFlow at module level: `tlcli explain --help` stays instant.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlcli.images import ImageError, load_images
from tlcli.errors import TlcliError, unknown_name
from tlcli.rundir import ModelRef, atomic_path, owning_run

MAX_SIDE = 1024  # originals are shown at most this large (longest side) in the PNGs
MIN_SIDE = 256  # smaller originals are enlarged (whole pixels) so the label stays readable
SHEET = "contact_sheet.png"
SHEET_TILE = 240  # px, longest side of an image on the contact sheet
SHEET_MAX = 100  # images on the contact sheet at most (the per-image PNGs have them all)
_POOLING = ("MaxPooling2D", "AveragePooling2D")


# ---------------------------------------------------------------- Grad-CAM


def require_keras(ref: ModelRef) -> None:
    """Grad-CAM needs the model's gradients: only the Keras model has them. Say where it is."""
    if ref.kind == "keras":
        return
    what = {"tflite": "a .tflite model", "savedmodel": "a SavedModel"}.get(ref.kind, f"a {ref.kind} model")
    run = owning_run(ref)
    hint = f"--model {run}" if run is not None and (run / "model.keras").is_file() else "--model RUN or a .keras file"
    raise TlcliError(f"explanations need the Keras model (they use its gradients); '{ref.path}' is {what}. "
                     f"Use {hint}.")


def feature_layer(backbone):
    """(the operation whose output Grad-CAM explains, [pooling layers between it and the output]).

    The backbone's output is its last convolutional feature map; when the backbone ends in
    max/average pooling (VGG), the map before the pooling is used: same features, finer grid.
    """
    tensor = backbone.outputs[0]
    if len(tensor.shape) != 4:
        raise TlcliError(f"backbone '{backbone.name}' outputs shape {tuple(tensor.shape)}, not a feature map: "
                         "Grad-CAM needs a convolutional backbone.")
    trailing = []
    while True:
        operation, node_index, _ = tensor._keras_history
        if type(operation).__name__ not in _POOLING:
            return operation, tensor, trailing[::-1]
        inputs = operation._inbound_nodes[node_index].input_tensors
        if len(inputs) != 1 or len(operation._inbound_nodes) != 1:
            return operation, tensor, trailing[::-1]
        trailing.append(operation)
        tensor = inputs[0]


_WINDOWS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D")


def cell_geometry(backbone, feature, size: int):
    """Where each cell of `feature` (a tensor of `backbone`) is centred in a size x size input.

    Returns ((n, stride, offset) for rows, (n, stride, offset) for columns): cell j of the n
    along that axis is centred stride * j + offset input pixels from the edge (pixel k spans
    k..k+1); None when some layer changes the grid in a way not modelled here. Convolutions and
    pooling (kernel, stride, dilation; "same" pads as TensorFlow does, the odd pixel after),
    zero-padding and cropping move the centres; layers that keep the grid (activations,
    normalisation, additions, concatenations) keep them, averaged where branches differ.
    Nested models (ConvNeXt's stem) are followed inside. Weights play no part.
    """
    start = ((size, 1.0, 0.5), (size, 1.0, 0.5))
    return _graph_geometry(backbone, start, feature)


def _graph_geometry(model, start, target=None):
    geometry = {id(model.inputs[0]): start}
    for operation in model.operations:
        for node in operation._inbound_nodes:
            inputs = [geometry[id(t)] for t in node.input_tensors if id(t) in geometry]
            outputs = [t for t in node.output_tensors if len(t.shape) == 4]
            if not inputs or not outputs or type(operation).__name__.startswith("Global"):
                continue  # off the image grid (squeeze-excitation vectors, even with keepdims)
            result = _step(operation, inputs)
            if result is None:
                return None
            for tensor in outputs:
                if any(d is not None and d != g[0] for d, g in zip(tensor.shape[1:3], result)):
                    return None  # the layer changed the grid otherwise than modelled: give up
                geometry[id(tensor)] = result
    return geometry.get(id(target if target is not None else model.outputs[0]))


def _step(operation, inputs: list):
    """The grid after one operation, from the grids of its inputs on the image grid; None: unknown."""
    name = type(operation).__name__
    if len(inputs) > 1 and len({(g[0][0], g[1][0]) for g in inputs}) > 1:
        # A (1, 1) input is broadcast (squeeze-excitation scales): it does not move the grid.
        inputs = [g for g in inputs if g[0][0] > 1 or g[1][0] > 1] or inputs
    grid = inputs[0]
    if name in _WINDOWS:
        result = tuple(_through_window(operation, axis, grid[axis]) for axis in (0, 1))
        return None if None in result else result
    if name == "ZeroPadding2D":
        return tuple((n + sum(pad), s, o - s * pad[0]) for (n, s, o), pad in zip(grid, operation.padding))
    if name == "Cropping2D":
        return tuple((n - sum(cut), s, o + s * cut[0]) for (n, s, o), cut in zip(grid, operation.cropping))
    if name == "Sequential":
        for layer in operation.layers:
            if grid is not None and not type(layer).__name__.startswith("Global"):
                grid = _step(layer, [grid])
        return grid
    if hasattr(operation, "operations") and hasattr(operation, "inputs"):  # a nested functional model
        return _graph_geometry(operation, grid)
    if any(g[0][0] != grid[0][0] or g[1][0] != grid[1][0] for g in inputs):
        return None
    return tuple((grid[axis][0], float(np.mean([g[axis][1] for g in inputs])),
                  float(np.mean([g[axis][2] for g in inputs]))) for axis in (0, 1))


def _through_window(layer, axis: int, grid):
    """(n, stride, offset) after a convolution or pooling window along `axis` (0 rows, 1 columns)."""
    n, stride, offset = grid
    kernel = _pair(getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None))[axis]
    step = _pair(layer.strides)[axis]
    dilation = _pair(getattr(layer, "dilation_rate", 1))[axis]
    padding = str(layer.padding).lower()
    extent = dilation * (kernel - 1) + 1
    if padding == "valid":
        out, before = (n - extent) // step + 1, 0
    elif padding == "same":
        out = -(-n // step)
        before = max((out - 1) * step + extent - n, 0) // 2
    else:
        return None
    return out, stride * step, offset + stride * ((extent - 1) / 2 - before)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class Explainer:
    """Grad-CAM for a tlcli classifier: uint8 images -> (heatmaps in [0, 1], probabilities).

    Built from the classifier's own layers (nothing is copied): image -> resize/preprocess ->
    backbone up to the feature map; then, under a gradient tape, feature map -> [pooling] ->
    pool -> dense logits. Only the head is differentiated, so a heatmap costs one forward pass.
    """

    def __init__(self, classifier, labels: list[str]):
        import keras

        from tlcli.model import get_backbone

        try:
            backbone = get_backbone(classifier)
            self._front = keras.Model(classifier.inputs, classifier.get_layer("preprocess").output)
            self.image_size = int(classifier.get_layer("resize").height)
            self._pool = classifier.get_layer("pool")
            self._dropout = classifier.get_layer("dropout")
            self._dense = classifier.get_layer("predictions")
        except ValueError:
            raise TlcliError(f"'{classifier.name}' is not a tlcli classifier (no backbone, pool and predictions "
                             "layers): cannot explain it.") from None
        operation, tensor, self._trailing = feature_layer(backbone)
        self._backbone, self._feature = backbone, tensor
        self.layer_name = operation.name
        self._bottom = backbone if tensor is backbone.outputs[0] else keras.Model(backbone.inputs, tensor)
        self.labels = list(labels)
        units = int(self._dense.units) if hasattr(self._dense, "units") else None
        if units is not None and units != len(self.labels):
            raise TlcliError(f"the model outputs {units} classes but its labels.txt lists {len(self.labels)}.")
        self._span = None

    @property
    def span(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The image's edges in heatmap cells: ((top, bottom), (left, right)), cell j spanning j..j+1.

        A plain stretch assumes ((0, h), (0, w)), but stride-2 layers padded on one side only
        (TensorFlow's "same", Keras's correct_pad) move every cell's receptive field a little
        further at each such layer: half a cell down and right for MobileNetV2 and EfficientNet
        (15.5 px at 224), up and left for ResNet; and valid convolutions (Xception, Inception at
        299) leave cells 32 px apart where a stretch puts them 29.9. Worked out from the layers'
        geometry (`cell_geometry`); the plain stretch when it cannot be.
        """
        if self._span is None:
            geometry = cell_geometry(self._backbone, self._feature, self.image_size)
            grid = [int(v) if v else 1 for v in self._feature.shape[1:3]]
            if geometry is None:
                self._span = ((0.0, float(grid[0])), (0.0, float(grid[1])))
            else:  # pixel u lies at cell coordinate (u - offset) / stride + 0.5
                self._span = tuple((float(np.clip(-offset / stride + 0.5, -2, 2)),
                                    float(np.clip((self.image_size - offset) / stride + 0.5, n - 2, n + 2)))
                                   for n, stride, offset in geometry)
        return self._span

    def explain(self, images: np.ndarray, classes=None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (n, h, w) float32 in [0, 1] at the feature map's resolution, and the
        probabilities (n, classes), for uint8 images (n, size, size, 3).

        `classes`: None (each image's predicted class), one class index, or one per image.
        A heatmap with no positive evidence anywhere is all zeros.
        """
        import tensorflow as tf

        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, 1, 1), np.float32), np.zeros((0, len(self.labels)), np.float32)
        x = self._front(tf.convert_to_tensor(images, tf.float32), training=False)
        fmap = tf.cast(self._bottom(x, training=False), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(fmap)
            logits = self._logits(fmap)
            probs = tf.nn.softmax(logits, axis=-1)
            if classes is None:
                target = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                target = tf.broadcast_to(tf.convert_to_tensor(classes, tf.int32), (len(images),))
            score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
        grads = tape.gradient(score, fmap)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per channel
        cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1)).numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1)
        cam = np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)
        return np.nan_to_num(cam).astype(np.float32), probs.numpy()

    def _logits(self, fmap):
        import keras
        import tensorflow as tf

        y = fmap
        for layer in self._trailing:
            y = layer(y)
        h = self._dropout(self._pool(y), training=False)
        dense = self._dense
        if getattr(dense, "activation", None) is keras.activations.softmax:
            z = tf.matmul(tf.cast(h, dense.kernel.dtype), dense.kernel)
            return tf.cast(z + dense.bias if dense.use_bias else z, tf.float32)
        return tf.math.log(tf.cast(dense(h), tf.float32) + 1e-12)  # a head without softmax: log-probabilities


def open_explainer(ref: ModelRef) -> Explainer:
    """Load the Keras model of `ref` (a run or .keras file) for Grad-CAM."""
    from tlcli.model import load_classifier

    require_keras(ref)
    return Explainer(load_classifier(ref.path), ref.labels)


def class_index(name: str | None, labels: list[str]) -> int | None:
    """--class LABEL as an index into the model's labels (exact, then case-insensitive)."""
    if name is None:
        return None
    if name in labels:
        return labels.index(name)
    folded = [label for label in labels if label.lower() == name.lower()]
    if len(folded) == 1:
        return labels.index(folded[0])
    raise unknown_name("class", name, labels, f"The model knows: {', '.join(labels)}.")


# ---------------------------------------------------------------- pictures


def load_original(path: str | os.PathLike, max_side: int = MAX_SIDE) -> np.ndarray:
    """The image as a person sees it: upright (EXIF), RGB, its own aspect ratio, at most
    `max_side` pixels on its longest side. Raises ImageError."""
    import warnings

    from PIL import Image

    from tlcli.images import _to_rgb

    if not os.path.isfile(path):  # a pipe named x.jpg would block the read for ever
        raise ImageError("not a regular file")
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")  # EXIF, palette and size warnings: load_image has judged the file
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale directly
            width, height = image.size
            if width * height > 2**28:
                raise ImageError(f"image too large to show: {width}x{height}")
            try:
                orientation = int(image.getexif().get(0x0112, 1))
            except Exception:  # noqa: BLE001 - bad EXIF loses only the turn
                orientation = 1
            rgb = _to_rgb(image)
            rgb.thumbnail((max_side, max_side), Image.LANCZOS)
            if _transpose_for(orientation) is not None:
                rgb = rgb.transpose(_transpose_for(orientation))
            return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - as load_image: one readable reason, never a traceback
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise ImageError(f"cannot show the image: {reason}") from None


def _transpose_for(orientation: int):
    """The transpose that shows an image of EXIF orientation 2-8 upright; None for 1 or nonsense."""
    from PIL import Image

    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
            7: t.TRANSVERSE, 8: t.ROTATE_90}.get(orientation)


def upsample(cam: np.ndarray, width: int, height: int, span=None) -> np.ndarray:
    """A heatmap stretched to (height, width), smoothly (bicubic), kept in [0, 1].

    `span` ((top, bottom), (left, right)): the image's edges in cells (`Explainer.span`), where
    the cells really look; default: the map's own edges (a plain stretch). Beyond its edges the
    map's border cells continue.
    """
    from PIL import Image

    cam = np.asarray(cam, np.float32)
    h, w = cam.shape
    (top, bottom), (left, right) = span if span is not None else ((0.0, h), (0.0, w))
    pad = 2  # Pillow samples only inside the image: room for edges up to 2 cells out
    padded = np.pad(cam, pad, mode="edge")
    box = tuple(float(np.clip(v, lo, hi) + pad) for v, lo, hi in
                ((left, -pad, w), (top, -pad, h), (right, 0, w + pad), (bottom, 0, h + pad)))
    image = Image.fromarray(padded, mode="F").resize((width, height), Image.BICUBIC, box=box)
    return np.clip(np.asarray(image, np.float32), 0.0, 1.0)


def _colormap() -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, span=None) -> np.ndarray:
    """`cam` (any resolution) stretched over `image` (uint8 RGB) in the jet colours: red where
    the evidence is, blue where there is none; hot areas are tinted more than cold ones."""
    height, width = image.shape[:2]
    heat = upsample(cam, width, height, span)
    colours = _colormap()[np.round(heat * 255).astype(np.uint8)]
    alpha = (0.25 + 0.35 * heat)[..., None]
    return np.clip(image * (1 - alpha) + colours * alpha, 0, 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:  # matplotlib's DejaVu Sans covers Latin, Greek and Cyrillic labels
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"), size)
    except Exception:  # noqa: BLE001 - any font will do
        try:
            return ImageFont.load_default(size)
        except Exception:  # noqa: BLE001 - Pillow without FreeType
            return ImageFont.load_default()


def draw_caption(image, lines: list[str], size: int | None = None) -> None:
    """White text on a dark band in the top-left corner of a Pillow image, shrunk to fit."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image, "RGBA")
    size = size or max(12, round(max(image.size) / 26))
    while True:
        font = _font(size)
        boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
        pad = max(2, size // 4)
        width = max(b[2] for b in boxes) + 2 * pad
        if width <= image.width or size <= 8:
            break
        size -= 1
    step = size + pad
    draw.rectangle((0, 0, min(width, image.width), len(lines) * step + pad), fill=(0, 0, 0, 170))
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * step), line, font=font, fill=(255, 255, 255, 255))


def _readable(image: np.ndarray) -> np.ndarray:
    """Small images enlarged by a whole factor (crisp pixels) to about MIN_SIDE."""
    factor = math.ceil(MIN_SIDE / max(image.shape[:2]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def contact_sheet(tiles: list[tuple[np.ndarray, list[str]]], path: str | Path, note: str = "") -> None:
    """Thumbnails on a grid, each with caption lines below it, written as a PNG."""
    from PIL import Image, ImageDraw

    cols = min(len(tiles), max(2, math.ceil(math.sqrt(len(tiles) * 1.5))), 8)
    rows = -(-len(tiles) // cols)
    font = _font(13)
    line_h, gap = 17, 10
    n_lines = max(len(lines) for _, lines in tiles)
    cell_w, cell_h = SHEET_TILE + gap, SHEET_TILE + n_lines * line_h + gap
    header = 26 if note else 0
    sheet = Image.new("RGB", (cols * cell_w + gap, rows * cell_h + gap + header), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if note:
        draw.text((gap, 6), note, font=font, fill=(90, 90, 90))
    for k, (tile, lines) in enumerate(tiles):
        r, c = divmod(k, cols)
        x, y = gap + c * cell_w, gap + header + r * cell_h
        thumb = Image.fromarray(tile)
        thumb.thumbnail((SHEET_TILE, SHEET_TILE), Image.LANCZOS)
        sheet.paste(thumb, (x + (SHEET_TILE - thumb.width) // 2, y + (SHEET_TILE - thumb.height) // 2))
        for j, line in enumerate(lines):
            text = line if draw.textlength(line, font=font) <= SHEET_TILE else _shorten(draw, line, font)
            draw.text((x, y + SHEET_TILE + 3 + j * line_h), text, font=font, fill=(20, 20, 20))
    _save_png(sheet, path)


def _shorten(draw, text: str, font) -> str:
    while len(text) > 4 and draw.textlength(text + "…", font=font) > SHEET_TILE:
        text = text[:-1]
    return text + "…"


def _save_png(image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ---------------------------------------------------------------- the command


@dataclass
class ExplainResult:
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
    file gets a row with its error; the others are still explained.
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
                                  explainer.span)
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


def _write_one(row: dict, cam, probs, model_input, target, labels, path: Path, span=None):
    """Blend, caption and save one heatmap; fill `row`. Returns the contact sheet tile, or None."""
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
    blended = overlay(_readable(original), cam, span)
    lines = [f"{labels[shown]}  {probs[shown]:.1%}"]
    if shown != predicted:
        lines.append(f"predicted: {labels[predicted]}  {probs[predicted]:.1%}")
    if not np.any(cam):
        lines.append("no region raises this class's score")
    picture = Image.fromarray(blended)
    draw_caption(picture, lines)
    try:
        _save_png(picture, path)
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
