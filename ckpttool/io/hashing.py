"""The project's checksums: the one sha256 (a file's bytes, or a folder's — sharded/DCP checkpoints — relative
paths and bytes) and the one CRC32 (``crc32``: zip records, and every byte a writer reads back).

``graft`` and ``average`` record it as provenance and ``eval`` keys its score cache with it, so the same input has
the same digest everywhere.

Digests are remembered, per process and across runs, under the *stamp* of the files hashed: for every file its
path, ``st_dev``, ``st_ino``, size, ``st_mtime_ns`` and ``st_ctime_ns``. Any write to a file moves its ctime, which
no program can set back (``os.utime`` sets mtime only), so an unchanged stamp means unchanged bytes, with one
exception that is excluded: a file written again within the same clock tick as an earlier write keeps its stamp
(file times are taken from a coarse clock). A digest is therefore remembered only when every file had been left
alone for ``SETTLED_NS`` before hashing began, and only when its stamp is the same after hashing (git's index
makes the same "racy" check).

Across runs the digests live in ``$CKPT_CACHE_DIR/digests`` (default ``$XDG_CACHE_HOME/ckpt`` or
``~/.cache/ckpt``), one small file per stamp, at most ``MAX_ENTRIES`` (the oldest go first). The folder is used
only when it belongs to this user and no one else can write to it; ``CKPT_DIGEST_CACHE=0`` turns it off. An entry
that is damaged or names another stamp is a miss: the file is hashed again.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import stat
import threading
import time

try:   # zlib-ng's CRC32 (carry-less multiply, ~20 GB/s here vs zlib's ~3): the same function and values, GIL released
    from zlib_ng.zlib_ng import crc32
except ImportError:   # a platform without its wheel
    import zlib

    crc32 = zlib.crc32

SETTLED_NS = 2_000_000_000   # files changed less than this before hashing began are not remembered
MAX_ENTRIES = 4096           # entries kept in the cache folder
CHUNK = 16 << 20             # hashed per chunk so that a progress bar can follow the bytes
_CACHE: dict = {}
_LOCK = threading.Lock()


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


def stamp(path) -> tuple:
    """What identifies the current bytes of `path` (a file or a folder): (path, dev, ino, size, mtime_ns,
    ctime_ns) of every file in it. Raises OSError when a file cannot be stat'ed."""
    path = os.path.abspath(os.fspath(path))
    stats = [(p, os.stat(p)) for p in _files(path)]
    return tuple((p, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for p, s in stats)


def known(key: tuple) -> str | None:
    """The digest remembered for the stamp `key` (this process, then the cache folder), or None."""
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is None:
        hit = _stored(key)
        if hit is not None:
            with _LOCK:
                _CACHE[key] = hit
    return hit


def remember(path, key: tuple, value: str, started_ns: int) -> None:
    """Remember `value` as the digest of `path`, whose stamp `key` was taken before hashing began at `started_ns`
    (`time.time_ns()`): only if no file had changed within SETTLED_NS before that and the stamp still holds."""
    if not key or any(max(f[4], f[5]) > started_ns - SETTLED_NS for f in key):
        return
    try:
        if stamp(path) != key:
            return
    except OSError:
        return
    with _LOCK:
        _CACHE[key] = value
    _store(key, value)


def digest(path, progress: bool | None = None) -> str:
    """sha256 hex digest of a file, or of a folder: for each file in sorted relative-path order, its relative path,
    a NUL byte and its bytes. Raises OSError when a file cannot be read. `progress`: a bar of the bytes read,
    'reading NAME' (ckpttool.report.progress), when the digest is not already known."""
    from ckpttool.report.progress import bar

    path = os.path.abspath(os.fspath(path))
    key = stamp(path)
    hit = known(key)
    if hit is not None:
        return hit
    started = time.time_ns()
    h = hashlib.sha256()
    with bar(sum(f[3] for f in key), f"reading {os.path.basename(os.path.normpath(path))}", "B", progress) as b:
        for p, *_ in key:
            if p != path:
                h.update(os.path.relpath(p, path).encode() + b"\0")
            _update(h, p, b.update)
    value = h.hexdigest()
    remember(path, key, value, started)
    return value


def _update(h, path: str, tick=None) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block the hash
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path}: not a regular file")
        size = st.st_size
        if size == 0:
            return
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for start in range(0, size, CHUNK):
                    h.update(view[start:start + CHUNK])  # hashlib releases the GIL on large buffers
                    if tick is not None:
                        tick(min(CHUNK, size - start))
            finally:
                view.release()
    finally:
        os.close(fd)


# --- the cache folder -------------------------------------------------------------------------------------------
def cache_dir() -> str | None:
    """The folder of remembered digests, or None when the cache is off or the folder is not this user's alone."""
    if os.environ.get("CKPT_DIGEST_CACHE", "1").strip().lower() in ("0", "off", "no", "false"):
        return None
    base = os.environ.get("CKPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ckpt")
    folder = os.path.join(base, "digests")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    private = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022
    return folder if private else None


def _entry(key: tuple) -> tuple[str, str]:
    name = hashlib.sha256(repr(key).encode("utf-8", "surrogateescape")).hexdigest()
    return name[:32], name


def _stored(key: tuple) -> str | None:
    folder = cache_dir()
    if folder is None:
        return None
    short, full = _entry(key)
    try:
        fd = os.open(os.path.join(folder, short), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            text = os.read(fd, 256).decode("ascii")
        finally:
            os.close(fd)
    except (OSError, UnicodeDecodeError):
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] != full or len(parts[1]) != 64 or parts[1].strip("0123456789abcdef"):
        return None
    return parts[1]


def _store(key: tuple, value: str) -> None:
    from ckpttool.errors import CkptError
    from ckpttool.io.write import write_text

    folder = cache_dir()
    if folder is None:
        return
    short, full = _entry(key)
    try:
        write_text(os.path.join(folder, short), f"{full} {value}\n", force=True)
        _prune(folder)
    except (CkptError, OSError):
        pass  # a cache: a digest not remembered is hashed again next time


def _prune(folder: str) -> None:
    with os.scandir(folder) as it:
        entries = [e for e in it if len(e.name) == 32 and e.is_file(follow_symlinks=False)]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns)
    for e in entries[:len(entries) - MAX_ENTRIES * 3 // 4]:
        try:
            os.unlink(e.path)
        except OSError:
            pass
