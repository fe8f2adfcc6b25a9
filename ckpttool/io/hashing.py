"""The one sha256 of the project: a file's bytes, or a folder's (sharded/DCP checkpoints) relative paths and bytes.

``graft`` and ``average`` record it as provenance and ``eval`` keys its score cache with it, so the same input has
the same digest everywhere. Digests are remembered per process by ``(st_dev, st_ino, size, mtime_ns)`` of every
file hashed, so asking twice for an unchanged file reads it once.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import threading

_CACHE: dict = {}
_LOCK = threading.Lock()


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


def _stamp(files: list[str]) -> tuple:
    stats = [os.stat(p) for p in files]
    return tuple((p, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for p, s in zip(files, stats))


def _update(h, path: str) -> None:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            h.update(mm)  # hashlib releases the GIL on large buffers


def digest(path) -> str:
    """sha256 hex digest of a file, or of a folder: for each file in sorted relative-path order, its relative path,
    a NUL byte and its bytes. Raises OSError when a file cannot be read."""
    path = os.fspath(path)
    files = _files(path)
    stamp = _stamp(files)
    with _LOCK:
        hit = _CACHE.get(stamp)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    for p in files:
        if p != path:
            h.update(os.path.relpath(p, path).encode() + b"\0")
        _update(h, p)
    value = h.hexdigest()
    with _LOCK:
        _CACHE[stamp] = value
    return value
