"""Writing checkpoints: torch zip (readable by `torch.load(weights_only=True)`, written without importing torch) and
safetensors, streamed one tensor at a time, always through `atomic_write`.

`atomic_write` creates the output as an unnamed file in the target directory (Linux O_TMPFILE; a hidden temp name
elsewhere), writes, fsyncs, verifies by re-reading, and only then gives it its name with one rename. A crash or
SIGKILL at any point leaves the previous output untouched and no partial file behind.
"""
from __future__ import annotations

import json
import os
import struct
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
def check_output(path: str, inputs: Iterable[str] = (), force: bool = False) -> str:
    """Validate an output path before any work: not an input, not existing unless force, directory present."""
    path = os.path.abspath(os.fspath(path))
    for p in inputs:
        if os.path.exists(p) and os.path.exists(path) and os.path.samefile(p, path):
            raise CkptError(f"refusing to overwrite the input {p}")
        if os.path.abspath(os.fspath(p)) == path:
            raise CkptError(f"refusing to overwrite the input {p}")
    if os.path.isdir(path):
        raise CkptError(f"{path} is a directory")
    if os.path.exists(path) and not force:
        raise CkptError(f"{path} exists; pass --force to replace it")
    if not os.path.isdir(os.path.dirname(path)):
        raise CkptError(f"output directory {os.path.dirname(path)} does not exist")
    return path


def atomic_write(path: str, write: Callable[[object], None], verify: Callable[[str], None] | None = None,
                 inputs: Iterable[str] = (), force: bool = False) -> str:
    """Write via `write(binary_file)`, fsync, `verify(readable_path)`, then rename into place. Returns the path."""
    path = check_output(path, inputs, force)
    directory = os.path.dirname(path)
    fd, tmp_name = _open_unnamed(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "w+b", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(fd)
        if verify is not None:
            verify(tmp_name or f"/proc/self/fd/{fd}")
        if tmp_name is None:  # give the unnamed file a temporary name, then rename over the target
            tmp_name = _link_unnamed(fd, directory, os.path.basename(path))
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(directory)
    finally:
        os.close(fd)
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def _open_unnamed(directory: str, base: str):
    if hasattr(os, "O_TMPFILE"):
        try:
            return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o644), None
        except OSError:
            pass
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    return fd, name


def _link_unnamed(fd: int, directory: str, base: str) -> str:
    import secrets

    name = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
    # linkat(..., AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the unnamed file; a plain link() would not follow.
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=dfd, follow_symlinks=True)
    finally:
        os.close(dfd)
    return name


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
