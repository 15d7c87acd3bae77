"""Files read in place: many files of one dtype seen as one flat array, read window by window.

    arr = FlatArray([(path, items), ...], np.uint16)     # local paths or gs:// / s3:// URLs
    arr.size                                             # items in all files together
    arr.windows(starts, length)   # [len(starts), length]: arr[s:s+length] for each s
    arr[idx]                      # any integer index array (np.asarray(arr): everything)
    arr.ranges_read, arr.bytes_read                      # what it has read (counters)

A local file is memory-mapped (the page cache holds what is read, the process nothing); a
bucket object is read by byte ranges, all ranges of one call fetched concurrently through
fsspec's `cat_ranges` (gcsfs for gs://, the client `paths.py` uses too): nothing is downloaded
whole and nothing lands on local disk, so memory and disk per process are bounded by what one
call asks for, whatever the files' total size. A window that spans two files is read as two
ranges. `listing(directory)` gives the sizes (and, on a bucket, the stored CRC32C) of a
directory's files in one request, to check a set of files before reading any.
"""

from __future__ import annotations

import base64
import os
import threading

import fsspec
import numpy as np

from gptjax.errors import UserError
from gptjax.storage import paths


def _url_fs(url: str):
    """(fsspec filesystem, path) of a bucket URL; a missing client package is one line."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        scheme = url.split("://", 1)[0]
        hint = "pip install 'gptjax[gcs]'" if scheme == "gs" else "install that package"
        raise UserError(f"{url}: {scheme}:// paths need an extra package ({e}); {hint}") from None


def listing(directory: str) -> dict[str, dict]:
    """{file name: {"size": bytes, "crc32c": "crc32c:%08x" or None}} of a directory's files
    (one listing request on a bucket; the checksum is the object's own, where it has one)."""
    if not paths.is_url(directory):
        if not os.path.isdir(directory):
            return {}
        out = {}
        for e in os.scandir(directory):
            try:        # another worker may rename its temporary file away meanwhile
                if e.is_file():
                    out[e.name] = {"size": e.stat().st_size, "crc32c": None}
            except FileNotFoundError:
                continue
        return out
    fs, root = _url_fs(directory)
    try:
        entries = fs.ls(root, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    out = {}
    for e in entries:
        if e.get("type") == "directory":
            continue
        crc = e.get("crc32c")
        if crc:
            crc = "crc32c:" + base64.b64decode(crc).hex()
        out[e["name"].rstrip("/").rsplit("/", 1)[-1]] = {"size": int(e["size"]), "crc32c": crc}
    return out


class FlatArray(np.lib.mixins.NDArrayOperatorsMixin):
    """The concatenation of files of `dtype` items, read in place (see the module docstring).
    Arithmetic and comparisons (`arr == eos`) read all of it, as `np.asarray(arr)` does."""

    ndim = 1

    def __init__(self, files: list[tuple[str, int]], dtype):
        self.dtype = np.dtype(dtype)
        self.paths = [os.fspath(p) for p, _ in files]
        counts = np.asarray([int(n) for _, n in files], np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.size = int(self.bounds[-1])
        self.shape = (self.size,)
        self.ranges_read = self.bytes_read = 0
        self._local = np.array([not paths.is_url(p) for p in self.paths] + [True])
        self._maps: dict[int, np.memmap] = {}
        self._fs = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    # -- reading
    def windows(self, starts, length: int) -> np.ndarray:
        """[len(starts), length]: row r is items [starts[r], starts[r] + length)."""
        starts = np.asarray(starts, np.int64).reshape(-1)
        if starts.size and (starts.min() < 0 or starts.max() + length > self.size):
            raise IndexError(f"windows of {length} at {starts.min()}..{starts.max()} are "
                             f"outside [0, {self.size})")
        out = np.empty((starts.size, length), self.dtype)
        first = np.searchsorted(self.bounds, starts, side="right") - 1
        inside = starts + length <= self.bounds[first + 1]
        pieces = []   # (row, column, file, first item, end item) in file coordinates
        local = self._local[first] & inside
        for f in np.unique(first[local]):   # local, inside one file: one gather per file
            rows = np.flatnonzero(local & (first == f))
            a = starts[rows] - self.bounds[f]
            out[rows] = self._map(int(f))[a[:, None] + np.arange(length)]
            self._count(rows.size, rows.size * length)
        for r in np.flatnonzero(inside & ~local):
            f = int(first[r])
            a = int(starts[r] - self.bounds[f])
            pieces.append((int(r), 0, f, a, a + length))
        for r in np.flatnonzero(~inside):   # spans files: one piece per file
            s, e, f, col = int(starts[r]), int(starts[r]) + length, int(first[r]), 0
            while s < e:
                stop = min(e, int(self.bounds[f + 1]))
                if stop > s:
                    b = int(self.bounds[f])
                    pieces.append((int(r), col, f, s - b, stop - b))
                    col += stop - s
                s, f = stop, f + 1
        for (r, col, _, a, b), data in zip(pieces, self._read(pieces), strict=True):
            out[r, col:col + b - a] = data
        return out

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            start, stop, step = idx.indices(self.size)
            if step != 1:
                return self[np.arange(start, stop, step, dtype=np.int64)]
            return self.windows([start], max(0, stop - start))[0]
        idx = np.asarray(idx, np.int64)
        if idx.ndim == 0:
            return self[idx.reshape(1)][0]
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.size):
            raise IndexError(f"index outside [0, {self.size})")
        out = np.empty(flat.size, self.dtype)
        f = np.searchsorted(self.bounds, flat, side="right") - 1
        for file in np.unique(f):    # each file's span of the wanted items, read once
            sel = np.flatnonzero(f == file)
            local = flat[sel] - self.bounds[file]
            lo, hi = int(local.min()), int(local.max()) + 1
            (data,) = self._read([(0, 0, int(file), lo, hi)])
            out[sel] = data[local - lo]
        return out.reshape(idx.shape)

    def __array__(self, dtype=None, copy=None):
        out = self.windows([0], self.size)[0] if self.size else np.empty(0, self.dtype)
        return out if dtype is None else out.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = [np.asarray(x) if isinstance(x, FlatArray) else x for x in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs)

    def _read(self, pieces) -> list[np.ndarray]:
        """The items [a, b) of file f for each (row, column, f, a, b), counted."""
        item = self.dtype.itemsize
        self._count(len(pieces), sum(b - a for *_, a, b in pieces))
        local = [p for p in pieces if not paths.is_url(self.paths[p[2]])]
        remote = [p for p in pieces if paths.is_url(self.paths[p[2]])]
        got = {}
        for p in local:
            got[id(p)] = self._map(p[2])[p[3]:p[4]]
        if remote:
            fs = self._filesystem()
            blobs = fs.cat_ranges([fs._strip_protocol(self.paths[p[2]]) for p in remote],
                                  [p[3] * item for p in remote], [p[4] * item for p in remote])
            for p, blob in zip(remote, blobs, strict=True):
                if isinstance(blob, BaseException):
                    raise blob
                got[id(p)] = np.frombuffer(blob, self.dtype)
        return [got[id(p)] for p in pieces]

    def _count(self, ranges: int, items: int) -> None:
        with self._lock:
            self.ranges_read += ranges
            self.bytes_read += items * self.dtype.itemsize

    def _map(self, f: int) -> np.memmap:
        m = self._maps.get(f)
        if m is None:
            n = int(self.bounds[f + 1] - self.bounds[f])
            m = np.memmap(self.paths[f], dtype=self.dtype, mode="r", shape=(n,))
            self._maps[f] = m
        return m

    def _filesystem(self):
        if self._fs is None:
            self._fs = _url_fs(next(p for p in self.paths if paths.is_url(p)))[0]
        return self._fs
