"""A deterministic corpus of messy image folders: what real DATA_DIRs throw at tlcli.

`make_hostile_folder(root)` writes a class-folder DATA_DIR and returns what tlcli must make of
it: which files it trains on, which it skips and why, which it never looks at. The same call
always writes the same bytes. `make_huge` writes the 100-megapixel images (run it in a
subprocess: it holds one at full size in memory).
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_image  # noqa: E402

GRAY = 128  # every mode_* image is this mid-gray, in its own mode's units
CLASSES = ("birds", "cats", "dogs")  # the classes that have usable images
LEFT_OUT = ("__MACOSX", "empty", "only_junk")  # class folders training leaves out, with a warning

# Each mode of the issue, saved in a format that keeps it, and the pixel value that means GRAY.
MODE_FILES = {
    "1": ("mode_1.png", None),  # dithered: half the pixels white
    "L": ("mode_L.png", GRAY),
    "LA": ("mode_LA.png", (GRAY, 255)),
    "P": ("mode_P.png", None),
    "P (GIF)": ("mode_P.gif", None),
    "RGBA": ("mode_RGBA.png", (GRAY, GRAY, GRAY, 255)),
    "CMYK": ("mode_CMYK.jpg", (0, 0, 0, 255 - GRAY)),
    "CMYK (TIFF)": ("mode_CMYK.tiff", (0, 0, 0, 255 - GRAY)),
    "I;16": ("mode_I16.png", GRAY * 257),
    "I;16 (TIFF)": ("mode_I16.tif", GRAY * 257),
    "I": ("mode_I.tif", GRAY),
    "F": ("mode_F.tif", GRAY / 255.0),
}


def make_hostile_folder(root: Path) -> dict:
    """Write the corpus under `root` (a DATA_DIR of class folders). Returns

    usable:   {path relative to root: class} of every image training must use
    skipped:  {path relative to root: a fragment its skip reason must contain}
    ignored:  paths that are never decoded (hidden, not images, at the top level)
    stray:    image files at the top level of DATA_DIR (ignored, with a warning)
    classes / left_out: the class names trained, and the class folders left out
    """
    root = Path(root)
    rng = random.Random(6)
    usable: dict[str, str] = {}
    skipped: dict[str, str] = {}
    ignored: list[str] = []

    def path(rel: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save(rel: str, image: Image.Image, cls: str | None = None, **options) -> None:
        image.save(path(rel), **options)
        if cls:
            usable[rel] = cls

    def junk(rel: str, data: bytes, reason: str) -> None:
        path(rel).write_bytes(data)
        skipped[rel] = reason

    def link(rel: str, target: str) -> None:
        os.symlink(target, path(rel))

    # ---- ordinary, learnable images in each class (bright cats, dark dogs, striped birds)
    for cls, kind in (("cats", "bright"), ("dogs", "dark"), ("birds", "striped")):
        for i in range(4):
            save(f"{cls}/{cls[:-1]}_{i}.{'png' if i % 2 else 'jpg'}", make_image(kind, 40, rng), cls)

    # ---- every Pillow mode of the issue, each a uniform GRAY
    for mode, (name, value) in MODE_FILES.items():
        save(f"cats/{name}", gray_image(mode.split()[0], (24, 20)), "cats")

    # ---- formats, animation, EXIF orientation
    bright = make_image("bright", 40, rng)
    save("cats/fmt.bmp", bright, "cats")
    save("cats/fmt.webp", bright, "cats", quality=90)
    save("cats/fmt.tiff", bright, "cats")
    save("cats/fmt.tif", bright, "cats", compression="tiff_deflate")
    save("cats/UPPER.JPG", bright, "cats")
    frames, options = animated_gif()
    save("cats/animated.gif", frames, "cats", **options)
    upright = quadrants()
    save("cats/orientation/upright.png", upright, "cats")
    for orientation in range(1, 9):
        stored, options = exif_oriented(upright, orientation)
        save(f"cats/orientation/exif_{orientation}.jpg", stored, "cats", **options)

    # ---- sizes from 1x1 to tens of megapixels
    save("cats/size_1x1.png", Image.new("RGB", (1, 1), (250, 250, 250)), "cats")
    save("cats/size_1x300.png", Image.new("L", (1, 300), 240), "cats")
    save("cats/size_3000x2.png", Image.new("RGB", (3000, 2), (230, 230, 230)), "cats")
    save("cats/size_6000x4000.jpg", smooth(bright, (6000, 4000)), "cats", quality=80)
    save("dogs/size_4000x3000.png", smooth(make_image("dark", 40, rng), (4000, 3000)), "dogs", compress_level=1)

    # ---- file names
    for name in ("with space.png", "quote's \"double\".png", "café ñ 日本語.png", "-leading-dash.png",
                 "comma,semi;colon.png", "nested/deeper/deepest.png"):
        save(f"birds/{name}", make_image("striped", 40, rng), "birds")

    # ---- hidden and non-image files: never looked at
    save("cats/.hidden.png", bright)
    path("cats/._cat_0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    save("cats/.thumbnails/thumb.png", bright)
    path("cats/notes.txt").write_text("not an image, and not named like one\n")
    path("cats/Thumbs.db").write_bytes(bytes(range(256)))
    ignored += ["cats/.hidden.png", "cats/._cat_0.jpg", "cats/.thumbnails/thumb.png", "cats/notes.txt",
                "cats/Thumbs.db"]

    # ---- symlinks: files and folders are followed; loops end; the same folder counts once
    link("cats/alias.png", "cat_1.png")
    usable["cats/alias.png"] = "cats"
    for i in range(2):
        save(f".store/more/extra_{i}.png", make_image("bright", 40, rng))
        usable[f"cats/more/extra_{i}.png"] = "cats"
    link("cats/more", "../.store/more")
    link("cats/more_again", "../.store/more")  # the same folder again: not entered twice
    link("cats/self", ".")  # a loop onto the class folder itself
    link("dogs/up", "..")  # a loop up to DATA_DIR: would bring every class into dogs
    link("dogs/dangling.png", "no_such_file.png")
    skipped["dogs/dangling.png"] = "broken symlink"
    link("dogs/loop.png", "loop.png")
    skipped["dogs/loop.png"] = "symlink loop"

    # ---- unusable files named like images
    dark = encoded(make_image("dark", 40, rng), "PNG")
    dark_jpeg = encoded(smooth(make_image("dark", 40, rng), (400, 300)), "JPEG", quality=90)
    junk("dogs/zero.jpg", b"", "empty file")
    junk("dogs/page.jpg", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "HTML page")
    junk("dogs/notes.png", "Just some text, ünïcode too.\n".encode() * 5, "text file")
    junk("dogs/truncated.png", dark[: len(dark) // 2], "truncated PNG")
    junk("dogs/truncated.jpg", dark_jpeg[: len(dark_jpeg) // 2], "truncated JPEG")
    junk("dogs/bad_header.png", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(200)), "corrupt PNG")
    junk("dogs/bomb.png", png_header_only(100_000, 100_000), "too large")
    junk("dogs/iphone.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC")
    junk("dogs/report.png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(64), "PDF")
    if hasattr(os, "mkfifo"):  # reading a pipe would block forever
        os.mkfifo(path("dogs/pipe.jpg"))
        skipped["dogs/pipe.jpg"] = "not a regular file"

    # ---- class folders with nothing usable
    path("empty").mkdir()
    junk("only_junk/garbage.jpg", bytes([0x01]) + bytes(rng.randrange(256) for _ in range(300)), "not an image")
    junk("only_junk/zero.png", b"", "empty file")
    path("__MACOSX/cats/._cat_0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble junk")  # from unzipping
    ignored.append("__MACOSX/cats/._cat_0.jpg")

    # ---- the top level of DATA_DIR: hidden folders and stray files are not classes
    save(".git/objects/blob.png", bright)
    save("stray.jpg", bright)
    path("README.md").write_text("# my dataset\n")
    path(".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    ignored += [".git/objects/blob.png", "stray.jpg", "README.md", ".DS_Store"]

    return {"usable": usable, "skipped": skipped, "ignored": ignored, "stray": ["stray.jpg"],
            "classes": list(CLASSES), "left_out": list(LEFT_OUT)}


# ---------------------------------------------------------------- image makers


def gray_image(mode: str, size: tuple[int, int]) -> Image.Image:
    """A uniform GRAY image in `mode` (GRAY's equivalent in that mode's units)."""
    if mode == "1":
        return Image.new("L", size, GRAY).convert("1")  # Floyd-Steinberg: about half white
    if mode == "P":
        return Image.new("RGB", size, (GRAY,) * 3).convert("P", palette=Image.Palette.ADAPTIVE)
    value = next(v for m, (_, v) in MODE_FILES.items() if m.split()[0] == mode)
    if mode == "I;16":
        return Image.fromarray(np.full(size[::-1], value, np.uint16))
    if mode == "I":
        return Image.fromarray(np.full(size[::-1], value, np.int32))
    if mode == "F":
        return Image.fromarray(np.full(size[::-1], value, np.float32))
    return Image.new(mode, size, value)


def animated_gif() -> tuple[Image.Image, dict]:
    """Two frames: red, then blue. tlcli uses the first."""
    red, blue = Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))
    return red, {"save_all": True, "append_images": [blue], "duration": 100, "loop": 0}


def quadrants() -> Image.Image:
    """64x48, a different colour in each quadrant: any wrong turn or flip shows."""
    array = np.zeros((48, 64, 3), np.uint8)
    array[:24, :32] = (255, 0, 0)
    array[:24, 32:] = (0, 255, 0)
    array[24:, :32] = (0, 0, 255)
    array[24:, 32:] = (255, 255, 255)
    return Image.fromarray(array)


# EXIF orientation n means "turn the stored pixels by _SHOW[n] to display them"; the stored
# pixels are therefore the upright picture turned the opposite way.
_UNDO = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
         7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def exif_oriented(upright: Image.Image, orientation: int) -> tuple[Image.Image, dict]:
    """`upright` stored as a camera would with EXIF orientation `orientation`."""
    stored = upright if _UNDO[orientation] is None else upright.transpose(_UNDO[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return stored, {"exif": exif, "quality": 95}


def smooth(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A large image grown from a small one (compresses well, so it is quick to write)."""
    return image.resize(size, Image.BILINEAR)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, followed by almost no pixel data: a bomb."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64)))
            + chunk(b"IEND", b""))


def make_huge(folder: str | os.PathLike, side: int = 10_000) -> dict[str, str]:
    """side x side (100 megapixels by default) JPEG and PNG in `folder`. Holds one at full size:
    call it in a subprocess so the caller's peak memory stays low."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = smooth(make_image("striped", 64, random.Random(0)), (side, side))
    files = {"jpeg": str(folder / "huge.jpg"), "png": str(folder / "huge.png")}
    image.save(files["jpeg"], quality=80)
    image.save(files["png"], compress_level=1)
    return files


if __name__ == "__main__":  # python tests/hostile.py DIR [huge]: write the corpus (or huge images) there
    target = Path(sys.argv[1])
    if sys.argv[2:] == ["huge"]:
        print(make_huge(target))
    else:
        summary = make_hostile_folder(target)
        print(f"{len(summary['usable'])} usable, {len(summary['skipped'])} to skip, in {target}")
