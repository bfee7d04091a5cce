"""File-system access for DATA_DIR and image paths: local paths, or URLs TensorFlow can read.

A path with a scheme (`gs://bucket/flowers`, `s3://…` through a plugin, `ram://…` in tests) goes
through `tf.io.gfile`; everything else through os and pathlib, so local data stays as fast as
before and predicting local files with a .tflite model never imports TensorFlow. URLs stay
strings throughout: pathlib would turn `gs://b/x` into `gs:/b/x`.

Errors from TensorFlow's file systems come out as Python's (FileNotFoundError, PermissionError,
or OSError with the store's message), so callers handle local and remote files alike; a missing
path is simply not a folder, nor existing, but a store that cannot be reached is an OSError.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from pathlib import Path

# As tlcli.config's: a scheme, then "://".
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path) -> bool:
    """Whether `path` names a file of a TensorFlow file system (has a `scheme://`)."""
    return isinstance(path, str) and _URL.match(path) is not None


def as_path(path) -> Path | str:
    """A local path as a Path; a URL as its string, untouched."""
    return path if is_url(path) else Path(path)


def name(path) -> str:
    """The last part of `path` (`flowers` for gs://b/flowers/)."""
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[-1]
    return Path(path).name


def join(base, *names: str):
    """`base`/`names`: a Path for a local base, a string for a URL."""
    if is_url(base):
        return "/".join([base.rstrip("/"), *names])
    return Path(base).joinpath(*names)


def is_dir(path) -> bool:
    """Whether `path` is a folder (on a bucket: a prefix with objects under it)."""
    if not is_url(path):
        return os.path.isdir(path)
    return _gfile_call(_gfile().isdir, path, default=False)


def exists(path) -> bool:
    """Whether `path` names a file or a folder."""
    if not is_url(path):
        return os.path.exists(path)
    return _gfile_call(_gfile().exists, path, default=False)


def read_bytes(path) -> bytes:
    """The whole content of the file `path`."""
    if not is_url(path):
        return Path(path).read_bytes()
    gfile = _gfile()

    def read(p):
        with gfile.GFile(p, "rb") as f:
            return f.read()

    return _gfile_call(read, path)


def listdir(path, files_by_suffix: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(folder names, file names) directly in the folder `path`, each sorted; local entries that
    are neither (broken links, pipes) are left out.

    On a bucket, telling a folder from a file costs one request per entry; a name ending in one
    of `files_by_suffix` (lower case) is taken to be a file without asking. Were it a folder after
    all, reading it fails later with "is a folder", as a local one would.
    """
    if not is_url(path):
        dirs, files = [], []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir():
                    dirs.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
        return sorted(dirs), sorted(files)
    gfile = _gfile()
    dirs, files = [], []
    for entry in _gfile_call(gfile.listdir, path):
        entry_name = entry.rstrip("/")
        if not entry_name:
            continue
        if entry.endswith("/"):  # some stores (GCS) mark folders so
            dirs.append(entry_name)
        elif entry_name.lower().endswith(files_by_suffix):
            files.append(entry_name)
        else:
            (dirs if is_dir(join(path, entry_name)) else files).append(entry_name)
    return sorted(dirs), sorted(files)


def walk(top, files_by_suffix: tuple[str, ...] = ()):
    """(folder, folder names, file names) for `top` and every folder under it, top-down, as
    os.walk: removing names from the folder list in place skips them. For URLs only; local
    callers walk with os.walk (symlinks need their care)."""
    dirs, files = listdir(top, files_by_suffix)
    yield top, dirs, files
    for sub in dirs:
        yield from walk(join(top, sub), files_by_suffix)


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern` (`*`, `?`, `[…]`; `**` locally), sorted."""
    if not is_url(pattern):
        return sorted(_glob.glob(os.path.expanduser(pattern), recursive=True))
    return sorted(_gfile_call(_gfile().glob, pattern, default=[]))


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _gfile_call(function, path, default=None):
    """`function(path)`, TensorFlow's errors turned into Python's whose text is the store's
    message on one line; `default` instead of FileNotFoundError, when given."""
    from tensorflow import errors

    try:
        return function(path)
    except errors.OpError as error:
        if isinstance(error, errors.NotFoundError):
            if default is not None:
                return default
            raise FileNotFoundError("not found") from None
        message = " ".join((error.message or "").split()) or type(error).__name__
        if isinstance(error, (errors.PermissionDeniedError, errors.UnauthenticatedError)):
            raise PermissionError(message) from None
        raise OSError(message) from None
