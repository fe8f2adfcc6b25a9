"""torch.save files: the zip archive (default since torch 1.6) and the legacy stream (OpenMMLab publish tools).

Zip: `<archive>/data.pkl` is the pickle; tensor bytes are the stored entries `<archive>/data/<key>`, located by their
local header so they can be memory-mapped. Legacy: five pickles in a row (magic number, protocol, sys info, the
object, the storage keys), then every storage as an 8-byte little-endian element count followed by its bytes.
"""
from __future__ import annotations

import io
import mmap
import struct
import zipfile
import zlib

# What zipfile raises on damaged archives besides BadZipFile (e.g. NotImplementedError for odd version fields).
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, NotImplementedError, zlib.error,
              struct.error, UnicodeDecodeError, OverflowError)

from ckpttool.errors import FormatError
from ckpttool.io.dtypes import BY_STORAGE, DType, by_name
from ckpttool.io.tensor import MappedFile, Storage
from ckpttool.io.unpickle import Budget, Inert, Judge, global_name, unpickle, unpickle_plain

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_PICKLE_BYTES = 1 << 31
MAX_INFLATE = 1 << 30        # bytes a compressed entry may inflate to
MAX_INFLATE_RATIO = 200      # ... and at most this many times its compressed size (plus 1 MiB)


# storage class name -> element type: torch.<typed storage>, and UntypedStorage as bytes (_rebuild_tensor_v3 names
# the element type); one lookup per storage of a checkpoint
_STORAGE_DTYPES = {**{f"torch.{name}": dtype for name, dtype in BY_STORAGE.items()},
                   "torch.storage.UntypedStorage": by_name("uint8"), "torch.UntypedStorage": by_name("uint8")}


def _storage_dtype(storage_type) -> DType:
    dtype = _STORAGE_DTYPES.get(global_name(storage_type))
    if dtype is None:
        raise FormatError("storage record without a known element type")
    return dtype


def _parse_pid(pid: tuple):
    if len(pid) < 5 or pid[0] != "storage":
        raise FormatError(f"unsupported persistent record {str(pid[0])[:40]!r}" if pid else "empty persistent id")
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(key, str) or len(key) > 256 or type(numel) is not int:
        raise FormatError("malformed storage record")
    return _storage_dtype(storage_type), key, numel


class _Slice(io.RawIOBase):
    """A read-only window [base, base+length) of a file, so zipfile can read an archive embedded in another file."""

    def __init__(self, path: str, base: int, length: int):
        self._f, self._base, self._len, self._pos = open(path, "rb"), base, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self._pos = {0: pos, 1: self._pos + pos, 2: self._len + pos}[whence]
        return self._pos

    def tell(self):
        return self._pos

    def readinto(self, b):
        n = max(0, min(len(b), self._len - self._pos))
        self._f.seek(self._base + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self):
        self._f.close()
        super().close()


def read_zip(mfile: MappedFile, base: int = 0, length: int | None = None, judge: Judge | None = None,
             budget: Budget | None = None):
    """Returns (root object, judge) of a torch zip archive stored at [base, base+length) of `mfile`.

    Storages are mapped lazily; nothing but the central directory and data.pkl is read. The archive is refused when
    entry names repeat or a local header disagrees with the central directory (torch and zipfile would read
    different bytes); a TorchScript archive (torch.load hands it to torch.jit.load, which runs its code) is code."""
    in_memory = isinstance(mfile, bytes)  # a zip embedded through torch.storage._load_from_bytes
    size = len(mfile) if in_memory else mfile.size
    length = size - base if length is None else length
    if base < 0 or length < 0 or base + length > size:
        raise FormatError("embedded archive lies past the end of the file")
    judge = Judge() if judge is None else judge
    budget = Budget(file_bytes=length) if budget is None else budget
    if in_memory:
        src = io.BytesIO(mfile)
    else:
        src = open(mfile.path, "rb") if base == 0 and length == size else _Slice(mfile.path, base, length)
    try:
        zf = zipfile.ZipFile(src)
        infolist = zf.infolist()
    except ZIP_ERRORS as exc:
        src.close()
        raise FormatError(f"corrupt or truncated zip archive ({exc})") from None
    with zf, src:
        infos = _check_entries(infolist)
        prefix = infolist[0].filename.split("/", 1)[0] + "/"  # torch names the archive after its first entry
        pkl = infos.get(prefix + "data.pkl")
        if pkl is None:
            raise FormatError("zip archive without <name>/data.pkl: not a torch checkpoint")
        if any(n.startswith(prefix + "code/") for n in infos) or prefix + "constants.pkl" in infos:
            judge.code("TorchScript archive", "torch.load hands TorchScript archives to torch.jit.load, which runs "
                       "the code stored in them")
        order = infos.get(prefix + "byteorder")
        if order is not None and _read_entry(zf, src, order, length).strip() not in (b"little", b""):
            raise FormatError("big-endian checkpoints are not supported")
        data = _read_entry(zf, src, pkl, length)
        storages: dict[str, Storage] = {}

        def persistent_load(pid):
            dtype, key, numel = _parse_pid(pid)
            if key in storages:
                return storages[key]
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise FormatError(f"storage {key!r} is missing from the archive")
            if numel * dtype.itemsize > info.file_size:
                raise FormatError(f"storage {key!r} claims {numel} {dtype.name} elements but holds "
                                  f"{info.file_size} bytes")
            if info.compress_type == zipfile.ZIP_STORED and in_memory:
                start = _data_offset(src, info, length)
                st = Storage(key, dtype, numel, data=mfile[start: start + info.file_size])
            elif info.compress_type == zipfile.ZIP_STORED:
                st = Storage(key, dtype, numel, mfile, base + _data_offset(src, info, length))
            else:  # repacked with compression: no mapping possible, inflate this entry only, within bounds
                st = Storage(key, dtype, numel, data=_read_entry(zf, src, info, length))
            storages[key] = st
            return st

        obj, judge = unpickle(data, persistent_load, read_legacy_bytes, judge, budget)
        return obj, judge


def _check_entries(infolist) -> dict:
    if not infolist:
        raise FormatError("empty zip archive")
    infos = {}
    for info in infolist:
        if info.filename in infos:
            raise FormatError(f"zip archive holds two entries named {info.filename!r} (torch and other readers "
                              "would disagree on which one counts)")
        if info.flag_bits & 0x1:
            raise FormatError(f"zip entry {info.filename!r} is encrypted")
        infos[info.filename] = info
    return infos


def _read_entry(zf, src, info: zipfile.ZipInfo, length: int) -> bytes:
    """One entry's bytes: stored entries straight from the file, deflated ones inflated lazily under a bound."""
    _data_offset(src, info, length)  # local header agrees with the central directory
    if info.file_size > MAX_PICKLE_BYTES:
        raise FormatError(f"zip entry {info.filename!r} is implausibly large")
    try:
        if info.compress_type == zipfile.ZIP_STORED:
            return zf.read(info)
        limit = min(MAX_INFLATE, MAX_INFLATE_RATIO * info.compress_size + (1 << 20))
        if info.file_size > limit:
            raise FormatError(f"budget exceeded: zip entry {info.filename!r} inflates to {info.file_size} bytes "
                              f"(limit {limit}); repack the archive without compression")
        out = bytearray()
        with zf.open(info) as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                out += chunk
                if len(out) > info.file_size:
                    raise FormatError(f"zip entry {info.filename!r} inflates past its declared size")
        return bytes(out)
    except ZIP_ERRORS as exc:
        raise FormatError(f"cannot read zip entry {info.filename!r} ({exc})") from None


def _data_offset(src, info: zipfile.ZipInfo, length: int) -> int:
    """Offset of an entry's bytes: after its local header (whose name/extra lengths may differ from the central one)."""
    src.seek(info.header_offset)
    head = src.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise FormatError(f"corrupt zip local header for {info.filename}")
    method = struct.unpack("<H", head[8:10])[0]
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    name = src.read(name_len)
    if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.orig_filename \
            or method != info.compress_type:
        raise FormatError(f"zip local header of {info.filename!r} disagrees with the central directory")
    offset = info.header_offset + 30 + name_len + extra_len
    if offset + info.file_size > length:
        raise FormatError(f"entry {info.filename} lies past the end of the file (truncated?)")
    return offset


def read_legacy(path: str, mfile: MappedFile, judge: Judge | None = None):
    """A legacy torch file, read through a memory map (so no length in the stream can make a read allocate)."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with mm:
        return _read_legacy_stream(mm, mfile=mfile, judge=judge, budget=Budget(file_bytes=mfile.size))


def read_legacy_bytes(data: bytes, judge: Judge | None = None, budget: Budget | None = None, nesting: int = 0):
    """A legacy torch file held in memory (as `torch.storage._load_from_bytes` embeds in plain pickles); its globals
    are judged with the enclosing file's."""
    fast = _embedded_storage(data)
    if fast is not None:
        return fast
    if data[:4] == b"PK\x03\x04":  # torch.load, which _load_from_bytes calls, reads zip archives too
        obj, _ = read_zip(bytes(data), judge=judge, budget=budget or Budget(file_bytes=len(data)))
        return obj
    obj, _ = _read_legacy_stream(io.BytesIO(data), data=data, judge=judge,
                                 budget=budget or Budget(file_bytes=len(data)), nesting=nesting)
    return obj


# The exact bytes torch writes for one storage pickled by `torch.save(storage, _use_new_zipfile_serialization=False)`
# (what plain-pickled tensors embed): magic, protocol, sys_info, ('storage', torch.<T>Storage, key, location, numel,
# None), [key], then the element count and the data. `_embedded_storage` parses exactly that and nothing else,
# without any unpickler (mmaction2 dumps hold tens of thousands of these); anything else takes the general path.
_EMBED_HEAD = (b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00(X\x10\x00\x00\x00"
               b"protocol_versionq\x01M\xe9\x03X\r\x00\x00\x00little_endianq\x02\x88X\n\x00\x00\x00type_sizesq\x03}q"
               b"\x04(X\x05\x00\x00\x00shortq\x05K\x02X\x03\x00\x00\x00intq\x06K\x04X\x04\x00\x00\x00longq\x07K")
_EMBED_PID = b"\x80\x02(X\x07\x00\x00\x00storageq\x00ctorch\n"


def _embedded_storage(data: bytes) -> Storage | None:
    try:
        if not data.startswith(_EMBED_HEAD) or data[len(_EMBED_HEAD) + 1: len(_EMBED_HEAD) + 4] != b"uu.":
            return None
        pos = len(_EMBED_HEAD) + 4
        if data[pos: pos + len(_EMBED_PID)] != _EMBED_PID:
            return None
        pos += len(_EMBED_PID)
        end = data.index(b"\n", pos, pos + 40)
        dtype = BY_STORAGE.get(data[pos:end].decode("ascii"))
        if dtype is None or data[end + 1: end + 4] != b"q\x01X":
            return None
        key, pos = _counted(data, end + 4)
        if data[pos: pos + 3] != b"q\x02X":
            return None
        _, pos = _counted(data, pos + 3)
        if data[pos: pos + 2] != b"q\x03":
            return None
        numel, pos = _small_int(data, pos + 2)
        tail = b"Ntq\x04Q.\x80\x02]q\x00X" + len(key).to_bytes(4, "little") + key + b"q\x01a."
        if numel is None or data[pos: pos + len(tail)] != tail:
            return None
        pos += len(tail)
        (count,) = struct.unpack_from("<q", data, pos)
        start = pos + 8
        if count != numel or start + numel * dtype.itemsize != len(data):
            return None
        return Storage(key.decode("utf-8"), dtype, numel, data=data[start:])
    except (ValueError, UnicodeDecodeError, struct.error):
        return None


def _counted(data: bytes, pos: int):
    n = int.from_bytes(data[pos: pos + 4], "little")
    if n > 256:
        raise ValueError("implausible string length")
    return data[pos + 4: pos + 4 + n], pos + 4 + n


def _small_int(data: bytes, pos: int):
    op = data[pos: pos + 1]
    if op == b"K":
        return data[pos + 1], pos + 2
    if op == b"M":
        return int.from_bytes(data[pos + 1: pos + 3], "little"), pos + 3
    if op == b"J":
        return int.from_bytes(data[pos + 1: pos + 5], "little", signed=True), pos + 5
    return None, pos


def _read_legacy_stream(f, mfile: MappedFile | None = None, data: bytes | None = None, judge: Judge | None = None,
                        budget: Budget | None = None, nesting: int = 0):
    if unpickle_plain(f, judge) != LEGACY_MAGIC:
        raise FormatError("not a torch legacy file (bad magic number)")
    version = unpickle_plain(f, judge)
    if version != 1001:
        raise FormatError(f"unsupported legacy protocol version {str(version)[:40]}")
    sys_info = unpickle_plain(f, judge)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise FormatError("big-endian checkpoints are not supported")
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
        if pid and pid[0] == "module":  # torch.save(model) records the class's source; the class is judged itself
            return Inert("torch module source record")
        dtype, key, numel = _parse_pid(pid)
        if len(pid) > 5 and pid[5] is not None:
            raise FormatError("legacy storage views are not supported")
        if key not in storages:
            storages[key] = Storage(key, dtype, numel, mfile, -1, None)
        return storages[key]

    obj, judge = unpickle(f, persistent_load, read_legacy_bytes, judge, budget, nesting)
    keys = unpickle_plain(f, judge)
    if not isinstance(keys, list):
        raise FormatError("malformed legacy storage key list")
    pos = f.tell()
    size = mfile.size if mfile is not None else len(data)
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise FormatError(f"legacy file lists unknown storage {key!r}")
        if pos + 8 > size:
            raise FormatError("legacy file truncated in storage data")
        f.seek(pos)
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != st.numel:
            raise FormatError(f"storage {key!r} holds {numel} elements, its record says {st.numel}")
        start, pos = pos + 8, pos + 8 + numel * st.dtype.itemsize
        if pos > size:
            raise FormatError("legacy file truncated in storage data")
        if mfile is not None:
            st.offset = start
        else:
            st.data = data[start:pos]
    missing = [k for k, st in storages.items() if st.offset < 0 and st.data is None]
    if missing:
        raise FormatError(f"storages without data: {missing[:3]}")
    return obj, judge
