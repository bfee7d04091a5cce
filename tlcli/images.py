"""Decoding one image file into the array a model sees, whatever the file holds.

Images are decoded with Pillow (every mode, EXIF orientation, formats TensorFlow's decoders
reject) and resized exactly once; training, prediction and evaluation all go through
`load_image`, so an image is prepared the same way everywhere. Unusable files raise
`ImageError` with the reason shown to the user; format detection by magic bytes says what a
misnamed file really is. A URL (`gs://…`, see `tlcli.fs`) is read whole through TensorFlow's
file systems and decoded from memory, with the same checks and reasons as a local file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tlcli import fs
from tlcli.formats import magic_name, what_it_is


class ImageError(Exception):
    """An image that cannot be used; the message is the reason shown to the user."""


# Memory: an image is decoded once, at the smallest size its format allows, and shrunk at once.
# A JPEG decodes at 1/2, 1/4 or 1/8 scale directly (Pillow's draft mode), so a 100-megapixel
# photo never exists at full size. PNG, TIFF, BMP, WebP and GIF decode in full once (about 4
# bytes a pixel in Pillow); from there only bands of about a megapixel are converted and
# reduced, so no second full-size copy is made (mode conversion, alpha compositing and EXIF
# orientation all happen on bands or on the final small image). Images over LARGE_PIXELS decode
# one at a time whichever thread loads them, so the peak is one large image plus small ones.

MAX_PIXELS = 2**28  # most pixels decoded at once (after JPEG draft): ~1 GiB at 4 bytes a pixel
LARGE_PIXELS = 2**24  # above this, decodes are serialised across threads
_BAND_PIXELS = 2**20
_REDUCING_GAP = 3  # as Pillow's resize(reducing_gap=3.0): block-average while >= 3x the target
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ORIENTATION_TAG = 0x0112
_large_decode = threading.Lock()
_pillow_limit = threading.Lock()


class _QuietPillow:
    """Pillow's warnings (EXIF, palette, decompression bomb) silenced while any thread decodes.

    warnings.catch_warnings is process-wide and not thread-safe: entered in several threads, the
    exits restore one another's filters and can leave them changed for good. One shared context,
    entered by the first decoding thread and left by the last, restores them exactly once.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._context = None

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._context = warnings.catch_warnings()
                self._context.__enter__()
                warnings.filterwarnings("ignore", module=r"PIL\.")
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._context.__exit__(None, None, None)
                self._context = None


_quiet_pillow = _QuietPillow()


@contextlib.contextmanager
def _pillow_limit_lifted():
    """Pillow's decompression-bomb guard off, for an image it refuses.

    Pillow judges the full size before any decoding (a 20000x10000 JPEG panorama is refused
    though it would decode at 2500x1250); tlcli applies MAX_PIXELS to the size really decoded.
    The setting is process-wide, so it is changed under a lock and always restored; images
    opened elsewhere meanwhile still get tlcli's own limit.
    """
    from PIL import Image

    with _pillow_limit:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode `path` to a (size, size, 3) uint8 RGB array; raise ImageError with a reason.

    ImageError is the only exception raised for anything a file can contain; its message is one
    readable line.
    """
    from PIL import Image, UnidentifiedImageError

    if fs.is_url(path):
        source = _read_url(path)
    else:
        _check_file(path)
        source = path
    opened: dict = {}
    try:
        with _quiet_pillow:
            return _open_and_decode(source, size, opened)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(what_it_is(source)) from None
    except Image.DecompressionBombError:
        raise ImageError("image too large (decompression bomb guard)") from None
    except MemoryError:
        raise ImageError("not enough memory to decode it") from None
    except FileNotFoundError:  # deleted or replaced since _check_file
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Exception as error:  # noqa: BLE001 - hostile bytes reach odd corners of the decoders
        kind = opened.get("format") or magic_name(source) or "image"
        text = _one_line(error)
        if isinstance(error, OSError) and ("truncated" in text or "broken data stream" in text):
            raise ImageError(f"truncated {kind} file") from None
        raise ImageError(f"unreadable {kind} file: {text}") from None


def _open_and_decode(source, size: int, opened: dict) -> np.ndarray:
    """Decode `source`, a path or the BytesIO of a URL's content."""
    from PIL import Image

    try:
        image = Image.open(source)
    except Image.DecompressionBombError:  # Image.open reads a BytesIO from its start again
        with _pillow_limit_lifted(), Image.open(source) as image:
            opened["format"] = image.format
            return _decode(image, size)
    with image:
        opened["format"] = image.format
        return _decode(image, size)


def _check_file(path) -> None:
    """Reasons to skip a file before Pillow sees it; a pipe named x.jpg would block reads forever."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError("broken symlink" if os.path.islink(path) else "file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageError("symlink loop") from None
        raise ImageError(f"cannot read the file: {_one_line(error)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a folder")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file (a pipe, socket or device)")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")


def _read_url(url: str) -> io.BytesIO:
    """A URL's content, or ImageError with the reason _check_file would give for a local file.

    One request reads it; only a failed read asks more, to say why (a bucket has no pipes or links).
    """
    try:
        try:
            content = fs.read_bytes(url)
        except OSError:
            if fs.is_dir(url):
                raise ImageError("is a folder") from None
            raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as error:
        raise ImageError(f"cannot read the file: {_one_line(error)}") from None
    if not content:
        raise ImageError("empty file (0 bytes)")
    return io.BytesIO(content)


def _decode(image, size: int) -> np.ndarray:
    """An opened (not yet decoded) image to (size, size, 3) uint8."""
    # JPEG only: decode at a smaller scale, but not below _REDUCING_GAP x size, so the rest of the
    # shrinking is the block-average + antialiased resize that the model's own Resize layer
    # repeats on raw pixels (drafting down to `size` made a served 2 MP photo differ by 0.04).
    image.draft("RGB", (size * _REDUCING_GAP, size * _REDUCING_GAP))
    width, height = image.size
    pixels = max(1, width) * max(1, height)
    if pixels > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels to decode, over tlcli's limit of "
                         f"{MAX_PIXELS // 10**6} megapixels")
    with _large_decode if pixels > LARGE_PIXELS else contextlib.nullcontext():
        image.load()
        orientation = _orientation(image)
        small = _shrink(image, size)
        image.close()  # frees the full-size pixels before the next large image may decode
    if orientation != 1:
        # The square result turns exactly as the whole image would have.
        small = small.transpose(_transpose_for(orientation))
    return np.asarray(small, dtype=np.uint8)


def _shrink(image, size: int):
    """A decoded image of any mode to (size, size) RGB, without a second full-size copy.

    As Pillow's resize(reducing_gap=3): block-average by whole factors while at least 3x the
    target remains, then resample bilinearly. Conversion to RGB comes first, band by band, so
    averaging sees colours (not palette indices) and transparent pixels already on white.
    """
    from PIL import Image

    width, height = image.size
    fx = max(1, width // (size * _REDUCING_GAP))
    fy = max(1, height // (size * _REDUCING_GAP))
    peak = _peak(image)
    if fx == 1 and fy == 1:
        return _to_rgb(image, peak).resize((size, size), Image.BILINEAR)
    reduced = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    rows = max(1, _BAND_PIXELS // (width * fy)) * fy
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        reduced.paste(_to_rgb(band, peak).reduce((fx, fy)), (0, top // fy))
    # The last block of a row or column may be partial: the box is the image's true extent.
    return reduced.resize((size, size), Image.BILINEAR, box=(0, 0, width / fx, height / fy))


def _peak(image) -> float | None:
    """The brightest value of a 16-bit or float image: all its bands must be scaled alike."""
    if image.mode not in _HIGH_DEPTH:
        return None
    low, high = image.getextrema()
    return float(high)


def _to_rgb(image, peak: float | None = None):
    """Any Pillow mode to 8-bit RGB; transparent areas become white.

    16-bit images are scaled from 0-65535; 32-bit integer and float images from their range
    (`peak`, the whole image's maximum, when this is one band of it): 0-1 floats, 0-255 as is.
    """
    from PIL import Image

    if image.mode in _HIGH_DEPTH:
        array = np.asarray(image, dtype=np.float64)
        if peak is None:
            peak = float(np.nanmax(array)) if array.size else 0.0
        sixteen = image.mode.startswith("I;16")
        if sixteen or peak > 255:
            scale = 255.0 / (65535.0 if sixteen or peak <= 65535 else peak)
        elif image.mode == "F" and peak <= 1.0:
            scale = 255.0
        else:
            scale = 1.0
        with np.errstate(all="ignore"):
            array = np.nan_to_num(array * scale, nan=0.0, posinf=255.0, neginf=0.0)
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def _orientation(image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable (bad EXIF loses only the turn)."""
    try:
        value = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - EXIF blocks are as hostile as the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def _transpose_for(orientation: int):
    """The transpose that shows an image of EXIF orientation 2-8 upright (as ImageOps.exif_transpose)."""
    from PIL import Image

    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
            7: t.TRANSVERSE, 8: t.ROTATE_90}[orientation]


def _one_line(error: BaseException) -> str:
    """An exception as one short printable line: decoders' messages can hold anything."""
    text = " ".join(str(error).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return (text or type(error).__name__)[:160]


def printable_path(path: str | os.PathLike) -> str:
    """`path` as text that can be printed and written as UTF-8: a name that is not valid UTF-8
    (the file system allows any bytes) shows its odd bytes as \\xNN instead of failing the write."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def load_images(paths: list, size: int, progress=None) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode `paths` in parallel threads (Pillow releases the GIL while decoding).

    Returns the stacked arrays of the usable images, their indices in `paths`, and
    (path, reason) for each skipped one. `progress(n)` is called as images finish.
    """
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    ok, skipped = [], []

    def work(i):
        try:
            out[i] = load_image(paths[i], size)
            return i, None
        except ImageError as error:
            return i, str(error)

    workers = min(32, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        for i, reason in pool.map(work, range(len(paths))):
            if reason is None:
                ok.append(i)
            else:
                skipped.append((printable_path(paths[i]), reason))
            if progress:
                progress(1)
    return out[ok] if len(ok) < len(paths) else out, ok, skipped


def decode_batches(paths: list, size: int, batch_size: int, ahead: int = 2):
    """Yield (indices into `paths` decoded, their images, [(index, reason) of each failure]) per batch.

    A background thread decodes up to `ahead` batches beyond the one being used, each in
    parallel threads, so decoding overlaps the caller's work and memory holds only a few
    batches, whatever the number of images.
    """
    from collections import deque

    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(1) as batcher:
        pending = deque()
        for start in starts:
            pending.append((start, batcher.submit(load_images, paths[start:start + batch_size], size)))
            if len(pending) > ahead:
                yield _batch(*pending.popleft())
        while pending:
            yield _batch(*pending.popleft())


def _batch(start: int, future):
    images, ok, skipped = future.result()
    failed = sorted(set(range(len(ok) + len(skipped))) - set(ok))  # skipped is in index order
    return [start + i for i in ok], images, [(start + i, reason) for i, (_, reason) in zip(failed, skipped)]
