"""Writing outputs. Checkpoints: torch zip (readable by `torch.load(weights_only=True)`, written without importing
torch) and safetensors, streamed one tensor at a time. Every output of every command goes through `atomic_output`.

`atomic_output` creates the output as an unnamed file in the target directory (Linux O_TMPFILE; a hidden temp name
elsewhere), the caller writes and verifies, then it is fsynced and named in one step: linked onto the name (fails if
the name exists: no-clobber without a check-then-rename window) or, with force, renamed over it. A crash or SIGKILL
at any point leaves the previous output untouched and no partial file behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
import re
import signal
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ckpttool.errors import CkptError
from ckpttool.io.dtypes import BY_NAME, DType, from_numpy
from ckpttool.io.hashing import crc32

ALIGN = 64


@dataclass
class OutTensor:
    """A tensor to write: its dtype name, shape, and a function returning its bytes (C-contiguous, little-endian).
    `crc` (`hashing.crc32` of those bytes) may be set by the producer, where the bytes are hot in cache; the writer
    computes it otherwise."""
    dtype: str
    shape: tuple
    data: Callable[[], "object"]  # -> bytes-like of exactly numel * itemsize bytes
    crc: int | None = None

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * BY_NAME[self.dtype].itemsize


def out_tensor(value) -> OutTensor:
    """An OutTensor from a TensorRef, a numpy array or a torch tensor (values read lazily where possible)."""
    from ckpttool.io.tensor import TensorRef

    if isinstance(value, OutTensor):
        return value
    if isinstance(value, TensorRef):
        return OutTensor(value.dtype, value.shape, lambda v=value: _contiguous(v.raw()))
    if type(value).__module__.startswith("torch"):
        from ckpttool.io.tensor import _torch_raw
        name = str(value.dtype).removeprefix("torch.")
        return OutTensor(name, tuple(value.shape), lambda v=value: _contiguous(_torch_raw(v)))
    import numpy as np

    arr = np.asarray(value)
    return OutTensor(from_numpy(arr.dtype).name, arr.shape, lambda a=arr: _contiguous(a))


def _contiguous(arr):
    import numpy as np

    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return memoryview(arr).cast("B") if arr.size else b""


# --- what was written ------------------------------------------------------------------------------------
class Written:
    """The byte runs a writer produced, each with the CRC32 computed when it was produced: `verify` reads the file
    back once and checks every byte against them (no re-parsing)."""

    def __init__(self, f):
        self.f, self.segments, self.tensors = f, [], 0

    def put(self, data, crc: int | None = None) -> int:
        """Write `data` at the current position; returns its offset."""
        offset = self.f.tell()
        self.f.write(data)
        self.segments.append((offset, len(data), crc32(data) if crc is None else crc))
        return offset

    def verify(self, name: str = "output", progress: bool | None = None) -> None:
        """`progress`: a bar of the bytes read back, described as 'verifying NAME' (ckpttool.report.progress)."""
        from ckpttool.report.progress import bar

        self.f.flush()
        fd = self.f.fileno()
        size = os.fstat(fd).st_size
        end = max((o + n for o, n, _ in self.segments), default=0)
        if size != end:
            raise CkptError(f"verification failed: {name} holds {size} bytes, {end} were written")
        if not size:
            return
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm, bar(size, f"verifying {name}", "B", progress) as b:
            view = memoryview(mm)
            try:
                for offset, n, crc in self.segments:
                    if crc32(view[offset: offset + n]) != crc:
                        raise CkptError(f"verification failed: {name} reads back different bytes at {offset}")
                    b.update(n)
            finally:
                view.release()


def _tensor_bytes(key: str, t: OutTensor):
    data = t.data()
    if len(data) != t.nbytes:
        raise CkptError(f"{key}: {len(data)} bytes for shape {list(t.shape)} {t.dtype}")
    return data, (crc32(data) if t.crc is None else t.crc)


# --- torch zip ---------------------------------------------------------------------------------------------
# Written by hand, byte for byte what zipfile writes for these entries (STORED, 1980-01-01, 64-byte aligned
# data via torch's 'FB' padding record, ZIP64 where zipfile would use it), so that each entry's CRC is computed
# once, by the producer, instead of again by zipfile.
ZIP64_LIMIT = (1 << 31) - 1
_DOSDATE = 1 << 5 | 1           # 1980-01-01
_CREATE_SYSTEM = 0 if os.name == "nt" else 3


def write_torch_zip(f, meta: dict | None, tensors: Iterable[tuple[str, OutTensor]], weights_key="state_dict",
                    on_tensor: Callable[[str, bytes], None] | None = None) -> Written:
    """Write `{"meta": meta, weights_key: OrderedDict(tensors)}` (or the bare state dict if weights_key is None)
    as a torch zip archive to the seekable binary file `f`. Tensors are read and written one at a time."""
    out, entries, records = Written(f), [], []
    for i, (key, t) in enumerate(tensors):
        data, crc = _tensor_bytes(key, t)
        entries.append(_zip_entry(out, f"archive/data/{i}", data, crc))
        out.tensors += 1
        if on_tensor is not None:
            on_tensor(key, data)
        records.append((key, t, str(i)))
        del data
    root = {"meta": meta or {}, weights_key: records} if weights_key else records
    for name, data in (("archive/data.pkl", _pickle_root(root)), ("archive/byteorder", b"little"),
                       ("archive/version", b"3\n")):
        entries.append(_zip_entry(out, name, data, crc32(data)))
    out.put(_central_directory(entries, f.tell()))
    return out


def _zip_entry(out: Written, name: str, data, crc: int) -> tuple:
    raw, size = name.encode(), len(data)
    zip64 = size * 1.05 > ZIP64_LIMIT       # zipfile's rule for entries written through ZipFile.open
    offset = out.f.tell()
    pad = (-(offset + 30 + len(raw) + (20 if zip64 else 0) + 4)) % ALIGN
    extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    version = 45 if zip64 else 20
    local = extra + (struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b"")
    shown = 0xFFFFFFFF if zip64 else size
    header = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", version, 0, 0, 0, 0, _DOSDATE, crc, shown, shown,
                         len(raw), len(local)) + raw + local
    out.put(header)
    out.put(data, crc)
    return raw, extra, size, crc, offset, version


def _central_directory(entries, start: int) -> bytes:
    cd = bytearray()
    for raw, extra, size, crc, offset, version in entries:
        big = [size, size] if size > ZIP64_LIMIT else []
        if offset > ZIP64_LIMIT:
            big.append(offset)
        if big:
            extra = struct.pack("<HH" + "Q" * len(big), 1, 8 * len(big), *big) + extra
            version = 45
        shown = 0xFFFFFFFF if size > ZIP64_LIMIT else size
        cd += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", version, _CREATE_SYSTEM, version, 0, 0, 0, 0,
                          _DOSDATE, crc, shown, shown, len(raw), len(extra), 0, 0, 0, 0o600 << 16,
                          0xFFFFFFFF if offset > ZIP64_LIMIT else offset)
        cd += raw + extra
    count, cd_size, end = len(entries), len(cd), start + len(cd)
    if count > 0xFFFF or start > ZIP64_LIMIT or cd_size > ZIP64_LIMIT:
        cd += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, start)
        cd += struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
        count, cd_size, start = min(count, 0xFFFF), min(cd_size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
    cd += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, start, 0)
    return bytes(cd)


def _pickle_root(root) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(root, out)
    out += b"."
    return bytes(out)


def _emit(obj, out: bytearray, depth: int = 0) -> None:
    if depth > 100:
        raise CkptError("meta nested too deeply to write")
    if obj is None:
        out += b"N"
    elif obj is True:
        out += b"\x88"
    elif obj is False:
        out += b"\x89"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif -(1 << 31) <= obj < (1 << 31):
            out += b"J" + struct.pack("<i", obj)
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += b"\x8a" + bytes([len(raw)]) + raw
    elif isinstance(obj, float):
        out += b"G" + struct.pack(">d", obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8", "surrogatepass")
        out += b"X" + struct.pack("<I", len(raw)) + raw
    elif isinstance(obj, list) and obj and isinstance(obj[0], tuple) and len(obj[0]) == 3 \
            and isinstance(obj[0][1], OutTensor):
        out += b"ccollections\nOrderedDict\n)R("  # OrderedDict() then SETITEMS of (key, tensor)
        for key, t, storage_key in obj:
            _emit(key, out, depth + 1)
            _emit_tensor(t, storage_key, out)
        out += b"u"
    elif isinstance(obj, dict):
        out += b"}"
        if obj:
            out += b"("
            for k, v in obj.items():
                _emit(k, out, depth + 1)
                _emit(v, out, depth + 1)
            out += b"u"
    elif isinstance(obj, (list, tuple)):
        if isinstance(obj, list):
            out += b"]"
            if obj:
                out += b"("
                for v in obj:
                    _emit(v, out, depth + 1)
                out += b"e"
        else:
            out += b"("
            for v in obj:
                _emit(v, out, depth + 1)
            out += b"t"
    else:
        _emit(str(obj), out, depth + 1)


def _emit_tensor(t: OutTensor, key: str, out: bytearray) -> None:
    d: DType = BY_NAME[t.dtype]
    numel = t.nbytes // d.itemsize
    stride, acc = [], 1
    for n in reversed(t.shape):
        stride.append(acc)
        acc *= max(n, 1)
    if d.is_quantized:
        raise CkptError(f"{key}: quantized tensors ({d.name}) cannot be written by ckpt")
    # dtypes without a typed storage class (float8 family, complex32, bits*, uint16+) are saved the way torch
    # saves them: an UntypedStorage counted in bytes, and _rebuild_tensor_v3 naming the dtype
    v3 = d.storage is None
    out += b"ctorch._utils\n_rebuild_tensor_v3\n(" if v3 else b"ctorch._utils\n_rebuild_tensor_v2\n("
    storage_class = "torch.storage\nUntypedStorage" if v3 else f"torch\n{d.storage}"
    out += b"(X\x07\x00\x00\x00storage" + f"c{storage_class}\n".encode()
    _emit(key, out)
    _emit("cpu", out)
    _emit(numel * d.itemsize if v3 else numel, out)
    out += b"tQ"            # persistent id tuple, BINPERSID
    _emit(0, out)           # storage offset
    _emit(tuple(t.shape), out)
    _emit(tuple(reversed(stride)), out)
    out += b"\x89ccollections\nOrderedDict\n)R"  # requires_grad=False, backward hooks
    if v3:
        out += f"ctorch\n{d.name}\n".encode()
    out += b"tR"


# --- safetensors ----------------------------------------------------------------------------------------------
def write_safetensors(f, meta: dict | None, tensors: Iterable[tuple[str, OutTensor]],
                      on_tensor: Callable[[str, bytes], None] | None = None,
                      final_meta: Callable[[], dict] | None = None) -> Written:
    """Write a safetensors file. The header (with `meta`) comes first; `final_meta`, if given, is called after the
    data and its header (which must have the same length, e.g. digests filled in for same-length placeholders) is
    written over the first one."""
    items = list(tensors)
    header = safetensors_header(meta, items)
    out = Written(f)
    out.put(header)
    for key, t in items:
        data, crc = _tensor_bytes(key, t)
        out.put(data, crc)
        out.tensors += 1
        if on_tensor is not None:
            on_tensor(key, data)
        del data
    if final_meta is not None:
        final = safetensors_header(final_meta(), items)
        if len(final) != len(header):
            raise CkptError("safetensors header changed length after the data was written")
        end = f.tell()
        f.seek(0)
        f.write(final)
        f.seek(end)
        out.segments[0] = (0, len(final), crc32(final))
    return out


def safetensors_header(meta: dict | None, items) -> bytes:
    header, offset = {}, 0
    for key, t in items:
        st = BY_NAME[t.dtype].st
        if st is None:
            raise CkptError(f"{key}: dtype {t.dtype} cannot be stored in safetensors")
        header[key] = {"dtype": st, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    if meta:
        header["__metadata__"] = {"format": "pt", "ckpt_meta": json.dumps(meta, default=str)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


# --- atomic output ----------------------------------------------------------------------------------------
# The one writer of every output (`-o`, `--save-metrics`, `--summary`, `--plot`, `--dump`, caches): docs/architecture.md
# "Writers". The file is built unnamed (O_TMPFILE) in the target directory, fsynced, and named only when complete:
# without force by linkat() onto the final name, which fails on an existing name (no check-then-rename window);
# with force by rename() over it. SIGTERM/SIGINT while an output is open raise `Terminated`/KeyboardInterrupt, so the
# cleanup runs; an unnamed file needs none, even after SIGKILL.
MODES = ("wb", "w", "ab", "a")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while an output was being written (raised so that temp files are cleaned up)."""


def check_output(path, inputs: Iterable = (), force: bool = False) -> str:
    """Validate an output path before any work and return it absolute: not one of `inputs` (same file, same
    realpath, or inside an input directory such as a DCP folder), not a directory, its directory present, and not
    existing unless `force`. `atomic_output` checks all of this again when it publishes the file."""
    path = os.path.abspath(os.fspath(path))
    _refuse_inputs(path, inputs)
    if os.path.isdir(path):
        raise CkptError(f"{path} is a directory")
    if os.path.lexists(path) and not force:
        raise CkptError(f"{path} exists; pass --force to replace it")
    if not os.path.isdir(os.path.dirname(path)):
        raise CkptError(f"output directory {os.path.dirname(path)} does not exist")
    return path


def _refuse_inputs(path: str, inputs: Iterable) -> None:
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    for p in inputs:
        if p is None:
            continue
        p = os.fspath(p)
        rp = os.path.realpath(p)
        same = rp == real or os.path.abspath(p) == path
        if not same and st is not None:
            try:
                pst = os.stat(p)
                same = (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino)
            except OSError:
                pass
        if same:
            raise CkptError(f"refusing to overwrite the input {p}")
        if os.path.isdir(rp) and real.startswith(rp.rstrip(os.sep) + os.sep):
            raise CkptError(f"refusing to write {path} inside the input {p}")


@contextlib.contextmanager
def atomic_output(path, *, force: bool = False, inputs: Iterable = (), mode: str = "wb",
                  encoding: str = "utf-8") -> Iterator:
    """A file object for `path` that becomes visible under that name only when the block ends without error.

        with atomic_output("avg.pth", force=False, inputs=paths) as f:
            f.write(data)          # raise inside the block and nothing is left behind

    mode "wb"/"w" (text: `encoding`, newline untranslated) creates or, with `force`, replaces; "ab"/"a" appends to
    what `path` holds (copied first; the result replaces it by rename, so readers never see half an append).
    The object is opened for reading too (`f.seek(0)`, `os.pread(f.fileno(), ...)`): verify inside the block.
    On leaving: flush, fsync, name (link: refused with "exists; pass --force" if the name appeared meanwhile;
    rename with force or append), fsync the directory. Inputs are checked before and again at publishing."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    append = mode.startswith("a")
    path = check_output(path, inputs, force or append)
    directory, base = os.path.split(path)
    with _signals_clean_up():
        fd, tmp = _open_temp(directory, base)
        f = None
        try:
            try:
                if append and os.path.exists(path):
                    with open(path, "rb") as old:
                        _copy(old.fileno(), fd)
                raw = os.fdopen(fd, "r+b", closefd=False)
                raw.seek(0, os.SEEK_END)
                f = raw if mode.endswith("b") else io.TextIOWrapper(raw, encoding=encoding, newline="")
                yield f
                if not f.closed:
                    f.flush()
                os.fsync(fd)
                _refuse_inputs(path, inputs)
                _publish(fd, tmp, path, replace=force or append)
                tmp = None
            except OSError as exc:   # ENOSPC, EDQUOT, EIO, EFBIG: one line, and nothing is left behind
                raise CkptError(f"cannot write {path}: {exc.strerror or exc}") from exc
        finally:
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:   # unflushed bytes of a failed write: the file is discarded anyway
                    pass
            os.close(fd)
            if tmp is not None:
                _unlink(tmp)


def sync_behind(f, pool):
    """Flush `f` (an `atomic_output` file) and hand what it holds so far to the disk on `pool` (a
    concurrent.futures executor): fdatasync runs while the caller goes on (e.g. waits for its inputs' digests), and
    the fsync that publishes the file has only the rest left. Returns the future: the caller must call its
    `result()` inside the `atomic_output` block (a write error is reported to one fsync of a descriptor only, so
    the publishing fsync would not see it again), and `pool` must be shut down before the file is closed."""
    f.flush()
    return pool.submit(getattr(os, "fdatasync", os.fsync), f.fileno())


def write_bytes(path, data, *, force: bool = False, inputs: Iterable = (), append: bool = False) -> str:
    """Write `data` to `path` through `atomic_output`, verified by reading it back. Returns the absolute path."""
    data = bytes(data)
    with atomic_output(path, force=force, inputs=inputs, mode="ab" if append else "wb") as f:
        start = f.tell()
        f.write(data)
        f.flush()
        if os.pread(f.fileno(), len(data) + 1, start) != data:
            raise CkptError(f"verification failed: {path} reads back different bytes")
    return os.path.abspath(os.fspath(path))


def write_text(path, text: str, *, force: bool = False, inputs: Iterable = (), append: bool = False,
               encoding: str = "utf-8") -> str:
    """`write_bytes` of `text` encoded (newlines untranslated)."""
    return write_bytes(path, text.encode(encoding), force=force, inputs=inputs, append=append)


def atomic_write(path, write: Callable[[object], None], verify: Callable[[str], None] | None = None,
                 inputs: Iterable = (), force: bool = False) -> str:
    """`atomic_output` for callers that write through a function: `write(binary_file)`, then `verify(readable)`
    with a path that reads the finished (still unnamed) file. Returns the absolute path."""
    with atomic_output(path, force=force, inputs=inputs) as f:
        write(f)
        f.flush()
        if verify is not None:
            verify(readable_path(f))
    return os.path.abspath(os.fspath(path))


def readable_path(f) -> str:
    """A path that opens the file behind the (possibly unnamed) file object `f` of `atomic_output`."""
    return f"/proc/self/fd/{f.fileno()}"


@contextlib.contextmanager
def scratch_file(near, suffix: str = "") -> Iterator[str]:
    """A hidden name next to `near` for an intermediate file that a path-based step needs (e.g. `average
    --update-bn`: average, recalibrate in place, then `publish_file`). The file is removed when the block ends,
    on an error, SIGTERM or SIGINT; files left by a SIGKILLed run (their pid gone) are removed on the next call."""
    import secrets
    import socket

    near = os.path.abspath(os.fspath(near))
    directory, base = os.path.split(near)
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
    _sweep_scratch(directory, base, host)
    name = os.path.join(directory, f".{base}.ckpt-{host}-{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")
    with _signals_clean_up():
        try:
            yield name
        finally:
            _unlink(name)


def publish_file(src: str, dst, *, force: bool = False, inputs: Iterable = ()) -> str:
    """Give the finished file `src` (same directory) the name `dst`: linked (failing on an existing name) or,
    with force, renamed over it; then `src` is gone and the directory fsynced."""
    dst = check_output(dst, inputs, force)
    _refuse_inputs(dst, inputs)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _publish(None, src, dst, replace=force)
    return dst


def _publish(fd: int | None, tmp: str | None, path: str, replace: bool) -> None:
    if _terminated:  # a SIGTERM whose exception something swallowed (a __del__, a library's except): no name
        raise Terminated("terminated (SIGTERM)")
    directory = os.path.dirname(path)
    if tmp is None:  # an unnamed O_TMPFILE file: linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names it
        try:
            _link_fd(fd, path)
        except FileExistsError:
            if not replace:
                raise CkptError(f"{path} exists; pass --force to replace it") from None
            import secrets

            hidden = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
            _link_fd(fd, hidden)
            try:
                os.replace(hidden, path)
            except BaseException:
                _unlink(hidden)
                raise
    elif replace:
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise CkptError(f"{path} exists; pass --force to replace it") from None
        except OSError:  # no hard links here (vfat, some FUSE): claim the name exclusively, then rename over it
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                raise CkptError(f"{path} exists; pass --force to replace it") from None
            os.replace(tmp, path)
        else:
            os.unlink(tmp)
    _fsync_dir(directory)


def _link_fd(fd: int, name: str) -> None:
    # CPython calls linkat() (not link(), which would not follow /proc's symlink) only when a dir_fd is given
    dfd = os.open(os.path.dirname(name), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=dfd, follow_symlinks=True)
    finally:
        os.close(dfd)


def _open_temp(directory: str, base: str) -> tuple[int, str | None]:
    """An unnamed file in `directory` (Linux O_TMPFILE), else a hidden named one; (fd, name or None)."""
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o644), None
        except OSError:
            pass
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    os.fchmod(fd, 0o644 & ~_umask())
    return fd, name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy(src: int, dst: int) -> None:
    while os.sendfile(dst, src, None, 1 << 30):
        pass


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def _sweep_scratch(directory: str, base: str, host: str) -> None:
    pattern = re.compile(rf"\.{re.escape(base)}\.ckpt-{re.escape(host)}-(\d+)-[0-9a-f]{{8}}\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        m = pattern.match(n)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            _unlink(os.path.join(directory, n))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_signal_depth = 0


@contextlib.contextmanager
def _signals_clean_up():
    """While an output is open, SIGTERM raises `Terminated` (SIGINT already raises KeyboardInterrupt) so that
    `finally` blocks remove temp files. Only in the main thread (where Python runs handlers), only over the
    default handler, installed by the outermost block."""
    global _signal_depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed = False
    if _signal_depth == 0:
        try:
            installed = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            if installed:
                signal.signal(signal.SIGTERM, _raise_terminated)
        except (ValueError, OSError):
            installed = False
    _signal_depth += 1
    try:
        yield
    finally:
        _signal_depth -= 1
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


_terminated = False


def _raise_terminated(signum, frame):
    global _terminated
    _terminated = True
    raise Terminated("terminated (SIGTERM)")


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save(path, state_dict: Iterable[tuple[str, object]] | dict, meta: dict | None = None,
         inputs: Iterable = (), force: bool = False, verify_extra: Callable[[str], None] | None = None,
         progress: bool | None = None) -> dict:
    """Write `{"meta", "state_dict"}` to `path` (torch zip, or safetensors when it ends in .safetensors) through
    `atomic_output`, verified before it is named: every byte read back against the CRC32 computed when it was
    produced (`Written.verify`), then `verify_extra(readable_path)` if given. Returns {"path", "tensors", "bytes"}.
    `progress`: bars of the bytes written and verified (ckpttool.report.progress)."""
    from ckpttool.report.progress import bar

    items = state_dict.items() if isinstance(state_dict, dict) else state_dict
    tensors: Iterator[tuple[str, OutTensor]] = ((k, out_tensor(v)) for k, v in items)
    if isinstance(state_dict, dict):
        tensors = list(tensors)
    total = sum(t.nbytes for _, t in tensors) if isinstance(tensors, list) else None
    name = os.path.basename(os.fspath(path))
    with atomic_output(path, force=force, inputs=inputs) as f:
        with bar(total, f"writing {name}", "B", progress) as b:
            tick = lambda key, data: b.update(len(data))  # noqa: E731
            if str(path).endswith(".safetensors"):
                written = write_safetensors(f, meta, tensors, on_tensor=tick)
            else:
                written = write_torch_zip(f, meta, tensors, on_tensor=tick)
        written.verify(name, progress)
        if verify_extra is not None:
            verify_extra(readable_path(f))
        size = f.tell()
    return {"path": os.path.abspath(os.fspath(path)), "tensors": written.tensors, "bytes": size}
