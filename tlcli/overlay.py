"""Pictures of heatmaps: originals shown upright, heatmaps stretched and blended over them,
captions, and contact sheets. Pillow and matplotlib's colour map only; no TensorFlow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tlcli.images import ImageError
from tlcli.rundir import atomic_path

MAX_SIDE = 1024  # originals are shown at most this large (longest side) in the PNGs
MIN_SIDE = 256  # smaller originals are enlarged (whole pixels) so the label stays readable
SHEET_TILE = 240  # px, longest side of an image on the contact sheet


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


def readable(image: np.ndarray) -> np.ndarray:
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
    save_png(sheet, path)


def _shorten(draw, text: str, font) -> str:
    while len(text) > 4 and draw.textlength(text + "…", font=font) > SHEET_TILE:
        text = text[:-1]
    return text + "…"


def save_png(image, path: str | Path) -> None:
    """A Pillow image written as a PNG, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")

