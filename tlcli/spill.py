"""Arrays too large for the memory budget, kept in a file and read and written by rows.

A memory-mapped file would do the same job, but every page it touches counts as this process's
resident memory until the kernel needs it back, so a run that spills its activation cache would
still look, and be accounted, as if it held the whole cache. Explicit reads and writes (pread,
pwrite) go through the OS page cache instead, which the kernel frees as it likes.

`DiskArray` supports exactly what tlcli.cache needs: `a[v]` for one view of a (views, n, ...)
array, `a[rows]`, `a[i:j]`, `a[rows] = values`, `a[views, rows]` (a gather), `np.asarray(a)`,
`len(a)`, `.shape`, `.dtype`, and `compact(rows)`.
"""

from __future__ import annotations

import math
import os
import weakref
from pathlib import Path

import numpy as np


class DiskArray:
    """A (n, ...) or (views, n, ...) array in a file; `n` rows a view, `stride` rows a view on disk."""

    def __init__(self, path: str | Path, shape: tuple, dtype, _parent: "DiskArray | None" = None,
                 _base: int = 0, _stride: int | None = None):
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self._stride = _stride  # rows a view on disk, for a (views, n, ...) array; None for (n, ...)
        if _parent is None:
            self.path = Path(path)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(self._fd, math.prod(self.shape) * self.dtype.itemsize)
            weakref.finalize(self, os.close, self._fd)
            self._owner = self
        else:
            self.path, self._fd, self._owner = _parent.path, _parent._fd, _parent._owner
        self._base = _base

    @classmethod
    def stacked(cls, path: str | Path, views: int, n: int, row_shape: tuple, dtype) -> "DiskArray":
        """A (views, n, *row_shape) array: view v's rows are `a[v]`."""
        return cls(path, (views, n, *row_shape), dtype, _stride=n)

    # -- geometry

    @property
    def _stacked(self) -> bool:
        return self._stride is not None

    @property
    def row_shape(self) -> tuple:
        return self.shape[2:] if self._stacked else self.shape[1:]

    @property
    def _row_bytes(self) -> int:
        return math.prod(self.row_shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    # -- indexing

    def __getitem__(self, key):
        if self._stacked and isinstance(key, (int, np.integer)):
            return DiskArray(self.path, self.shape[1:], self.dtype, _parent=self,
                             _base=self._base + int(key) * self._stride)
        return self._read(self._flat(key))

    def __setitem__(self, key, values) -> None:
        rows = self._flat(key)
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(len(rows), *self.row_shape)
        for start, stop in _runs(rows):
            os.pwrite(self._fd, values[start:stop].tobytes(), int(rows[start]) * self._row_bytes)

    def __array__(self, dtype=None, copy=None):
        if self._stacked:
            array = np.stack([np.asarray(self[v]) for v in range(self.shape[0])])
        else:
            array = self._read(np.arange(self._base, self._base + self.shape[0]))
        return array if dtype is None else array.astype(dtype)

    def _flat(self, key) -> np.ndarray:
        """The file rows (in units of one row) that `key` addresses, in the order asked for."""
        if self._stacked:
            if not isinstance(key, tuple) or len(key) != 2:
                raise IndexError("a stacked DiskArray takes a[view] or a[views, rows]")
            views, rows = (np.asarray(k, np.int64) for k in key)
            return self._base + views * self._stride + rows
        if isinstance(key, slice):
            return self._base + np.arange(*key.indices(self.shape[0]), dtype=np.int64)
        rows = np.asarray(key, np.int64)
        return self._base + rows.reshape(-1)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        for start, stop in _runs(rows):
            size = (stop - start) * self._row_bytes
            data = os.pread(self._fd, size, int(rows[start]) * self._row_bytes)
            out[start:stop] = np.frombuffer(data, self.dtype).reshape(stop - start, *self.row_shape)
        return out

    # -- in place

    def compact(self, rows: list[int]) -> "DiskArray":
        """Keep only `rows` of each view, in that order, moved up in the file; returns the smaller array."""
        views = range(self.shape[0]) if self._stacked else [None]
        for v in views:
            part = self[v] if v is not None else self
            for new, old in enumerate(rows):
                if new != old:
                    part[[new]] = part[[old]]
        if self._stacked:
            return DiskArray(self.path, (self.shape[0], len(rows), *self.row_shape), self.dtype, _parent=self,
                             _base=self._base, _stride=self._stride)
        return DiskArray(self.path, (len(rows), *self.row_shape), self.dtype, _parent=self, _base=self._base)


def _runs(rows: np.ndarray):
    """(start, stop) positions in `rows` of each stretch of consecutive file rows, for one I/O call each."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    edges = [0, *breaks.tolist(), len(rows)]
    yield from zip(edges[:-1], edges[1:])
