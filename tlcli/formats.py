"""What a file that is not a usable image really is, from its first bytes: the reasons a user
reads in skipped.csv ("an HTML page: a failed download?") instead of Pillow's "cannot identify".
"""

from __future__ import annotations

import io


# First bytes of formats, for saying what a file Pillow cannot open is.
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))


def _head(source, n: int) -> bytes:
    """The first `n` bytes of `source`, a path or a BytesIO."""
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:n]
    with open(source, "rb") as f:
        return f.read(n)


def what_it_is(source) -> str:
    """Why Pillow could not identify `source` (a path or BytesIO): say what the file looks like instead."""
    try:
        head = _head(source, 512)
    except OSError:
        return "not an image Pillow can read"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:300]:
        return "not an image Pillow can read (an HTML page: a failed download?)"
    if b"<svg" in text[:300]:
        return "not an image Pillow can read (an SVG drawing: vector images are not supported)"
    if head.startswith(b"%PDF"):
        return "not an image Pillow can read (a PDF document)"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
        return "HEIC/HEIF image: not supported (convert it to JPEG or PNG)"
    name = magic_name(source, head)
    if name:
        return f"corrupt {name} file: Pillow cannot read its header"
    if b"\x00" not in head and all(b >= 32 or b in b"\t\n\r\f" for b in head):
        return "not an image Pillow can read (a text file)"
    return "not an image Pillow can read (unknown format)"


def magic_name(source, head: bytes | None = None) -> str | None:
    """The format a file's first bytes announce, if one of the common ones."""
    if head is None:
        try:
            head = _head(source, 16)
        except OSError:
            return None
    if head.startswith(b"RIFF") and head[8:12] != b"WEBP":
        return None
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)
