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
import os
import re
import secrets
import signal
import socket
import struct
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ckpttool.errors import CkptError
from ckpttool.io.dtypes import BY_NAME, DType, from_numpy

ALIGN = 64


@dataclass
class OutTensor:
    """A tensor to write: its dtype name, shape, and a function returning its bytes (C-contiguous, little-endian)."""
    dtype: str
    shape: tuple
    data: Callable[[], "object"]  # -> bytes-like of exactly numel * itemsize bytes

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


# --- torch zip ---------------------------------------------------------------------------------------------
def write_torch_zip(f, meta: dict | None, tensors: Iterable[tuple[str, OutTensor]], weights_key="state_dict",
                    on_tensor: Callable[[str, bytes], None] | None = None) -> None:
    """Write `{"meta": meta, weights_key: OrderedDict(tensors)}` (or the bare state dict if weights_key is None)
    as a torch zip archive to the seekable binary file `f`. Tensors are read and written one at a time."""
    records = []
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for i, (key, t) in enumerate(tensors):
            nbytes = t.nbytes
            data = t.data()
            if len(data) != nbytes:
                raise CkptError(f"{key}: {len(data)} bytes for shape {list(t.shape)} {t.dtype}")
            _write_aligned(zf, f"archive/data/{i}", data, nbytes)
            if on_tensor is not None:
                on_tensor(key, data)
            records.append((key, t, str(i)))
        root = {"meta": meta or {}, weights_key: records} if weights_key else records
        _write_aligned(zf, "archive/data.pkl", _pickle_root(root), None)
        _write_aligned(zf, "archive/byteorder", b"little", None)
        _write_aligned(zf, "archive/version", b"3\n", None)


def _write_aligned(zf: zipfile.ZipFile, name: str, data, nbytes: int | None) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    size = len(data) if nbytes is None else nbytes
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
    start = zf.fp.tell() + 30 + len(name.encode()) + (20 if zip64 else 0)
    pad = (-(start + 4)) % ALIGN
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # 'FB' padding record, as torch writes
    with zf.open(info, "w", force_zip64=zip64) as out:
        out.write(data)


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
    out += b"ctorch._utils\n_rebuild_tensor_v2\n("
    out += b"(X\x07\x00\x00\x00storage" + f"ctorch\n{d.storage}\n".encode()
    _emit(key, out)
    _emit("cpu", out)
    _emit(numel, out)
    out += b"tQ"            # persistent id tuple, BINPERSID
    _emit(0, out)           # storage offset
    _emit(tuple(t.shape), out)
    _emit(tuple(reversed(stride)), out)
    out += b"\x89ccollections\nOrderedDict\n)Rt"  # requires_grad=False, backward hooks, end args
    out += b"R"


# --- safetensors ----------------------------------------------------------------------------------------------
def write_safetensors(f, meta: dict | None, tensors: Iterable[tuple[str, OutTensor]],
                      on_tensor: Callable[[str, bytes], None] | None = None) -> None:
    items = list(tensors)
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
    f.write(struct.pack("<Q", len(raw)) + raw)
    for key, t in items:
        data = t.data()
        if len(data) != t.nbytes:
            raise CkptError(f"{key}: {len(data)} bytes for shape {list(t.shape)} {t.dtype}")
        f.write(data)
        if on_tensor is not None:
            on_tensor(key, data)


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
        finally:
            if f is not None and not f.closed:
                f.close()
            os.close(fd)
            if tmp is not None:
                _unlink(tmp)


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
    directory = os.path.dirname(path)
    if tmp is None:  # an unnamed O_TMPFILE file: linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names it
        try:
            _link_fd(fd, path)
        except FileExistsError:
            if not replace:
                raise CkptError(f"{path} exists; pass --force to replace it") from None
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
    `finally` blocks remove temp files. Only in the main thread, and only over the default handler."""
    global _signal_depth
    installed = False
    if _signal_depth == 0 and threading.current_thread() is threading.main_thread():
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


def _raise_terminated(signum, frame):
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


def save(path: str, state_dict: Iterable[tuple[str, object]] | dict, meta: dict | None = None,
         inputs: Iterable[str] = (), force: bool = False, verify_extra: Callable[[str], None] | None = None) -> dict:
    """Write `{"meta", "state_dict"}` to `path` (torch zip, or safetensors when it ends in .safetensors),
    atomically, verified by re-reading every tensor and comparing CRC32s. Returns {"path", "tensors", "bytes"}."""
    items = state_dict.items() if isinstance(state_dict, dict) else state_dict
    tensors: Iterator[tuple[str, OutTensor]] = ((k, out_tensor(v)) for k, v in items)
    crcs: dict[str, int] = {}

    def record(key, data):
        crcs[key] = zlib.crc32(data)

    def write(f):
        if str(path).endswith(".safetensors"):
            write_safetensors(f, meta, tensors, on_tensor=record)
        else:
            write_torch_zip(f, meta, tensors, on_tensor=record)

    def verify(readable: str):
        verify_file(readable, crcs)
        if verify_extra is not None:
            verify_extra(readable)

    written = atomic_write(path, write, verify, inputs=inputs, force=force)
    return {"path": written, "tensors": len(crcs), "bytes": os.path.getsize(written)}


def verify_file(path: str, crcs: dict[str, int]) -> None:
    """Re-read a written file with our reader; every tensor must be present with the bytes written."""
    from ckpttool.io.checkpoint import load

    sd = load(path).state_dict()
    if set(sd) != set(crcs):
        raise CkptError(f"verification failed: written keys differ ({len(sd)} read, {len(crcs)} written)")
    for key, t in sd.items():
        if zlib.crc32(_contiguous(t.raw())) != crcs[key]:
            raise CkptError(f"verification failed: {key} reads back different bytes")
