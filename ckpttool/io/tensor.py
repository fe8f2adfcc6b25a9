"""Lazy tensors: what a checkpoint says about a tensor, with bytes read only when asked for.

A `Storage` is a run of bytes in a file (memory-mapped on demand) or in memory. A `TensorRef` is a strided view of
a storage (dtype, shape, stride, element offset), exactly as torch stores it. Bounds are checked when the record is
made, so a header that claims more data than the file holds is an error before anything is allocated.
"""
from __future__ import annotations

import math
import mmap
import os
import threading

from ckpttool.errors import FormatError
from ckpttool.io.dtypes import DType, widen_bfloat16

MAX_ELEMENTS = 1 << 50  # a sanity bound on claimed sizes; real bounds come from the file size


class MappedFile:
    """A file opened once and memory-mapped on first use; shared by every storage that lives in it."""

    def __init__(self, path: str):
        self.path = path
        self.size = os.path.getsize(path)
        self._mm = None
        self._lock = threading.Lock()

    def view(self, offset: int, nbytes: int):
        import numpy as np

        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise FormatError(f"{self.path}: data range {offset}+{nbytes} lies past the end of the file "
                              f"({self.size} bytes)")
        if nbytes == 0:
            return np.empty(0, dtype=np.uint8)
        with self._lock:
            if self._mm is None:
                with open(self.path, "rb") as f:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=offset)

    def release(self, offset: int, nbytes: int) -> None:
        """Drop this process's mapping of the pages covering [offset, offset+nbytes) (MADV_DONTNEED). The data stays
        in the page cache and is faulted back in if read again; streaming readers call this to keep RSS bounded."""
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if self._mm is None or advice is None or nbytes <= 0:
            return
        start = max(offset, 0) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = min(offset + nbytes, self.size)
        if stop > start:
            try:
                self._mm.madvise(advice, start, stop - start)
            except (OSError, ValueError):
                pass

    def close(self):
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # views still alive; the map is freed with them
                pass
            self._mm = None


class Storage:
    """`nbytes` bytes of element type `dtype`, at `offset` in `file` (or held in `data`)."""

    __slots__ = ("key", "dtype", "numel", "file", "offset", "data")

    def __init__(self, key: str, dtype: DType, numel: int, file: MappedFile | None = None, offset: int = 0,
                 data: bytes | None = None):
        if not isinstance(numel, int) or numel < 0 or numel > MAX_ELEMENTS:
            raise FormatError(f"storage {key!r} claims an invalid size {numel!r}")
        self.key, self.dtype, self.numel = key, dtype, numel
        self.file, self.offset, self.data = file, offset, data

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def bytes_view(self):
        """The storage's bytes as a read-only uint8 ndarray (zero-copy on mapped files)."""
        import numpy as np

        if self.data is not None:
            if len(self.data) < self.nbytes:
                raise FormatError(f"storage {self.key!r} holds {len(self.data)} bytes, needs {self.nbytes}")
            return np.frombuffer(self.data, dtype=np.uint8, count=self.nbytes)
        if self.file is None:
            raise FormatError(f"storage {self.key!r} has no data")
        return self.file.view(self.offset, self.nbytes)


class TensorRef:
    """A tensor as recorded in a checkpoint. Values are read only through `raw()`, `numpy()` or `to_torch()`."""

    __slots__ = ("storage", "offset", "shape", "stride", "is_param", "requires_grad", "_tensor")

    def __init__(self, storage: Storage, offset: int, shape, stride=None, is_param=False, requires_grad=False):
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise FormatError(f"negative tensor shape {shape}")
        if stride is None:
            stride = contiguous_stride(shape)
        stride = tuple(int(s) for s in stride)
        if len(stride) != len(shape) or any(s < 0 for s in stride):
            raise FormatError(f"tensor stride {stride} does not fit shape {shape}")
        offset = int(offset)
        if offset < 0:
            raise FormatError(f"negative storage offset {offset}")
        numel = math.prod(shape)
        if numel and offset + sum((n - 1) * s for n, s in zip(shape, stride)) >= storage.numel:
            raise FormatError(f"tensor of shape {list(shape)} reaches past its storage {storage.key!r} "
                              f"({storage.numel} elements)")
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.is_param, self.requires_grad, self._tensor = is_param, requires_grad, None

    @classmethod
    def from_torch(cls, tensor) -> "TensorRef":
        """Wrap a real, already-loaded torch tensor (used by --trust loading)."""
        from ckpttool.io.dtypes import by_name

        ref = cls.__new__(cls)
        ref.storage = Storage("memory", by_name(str(tensor.dtype).removeprefix("torch.")), tensor.numel())
        ref.offset, ref.shape, ref.stride = 0, tuple(tensor.shape), contiguous_stride(tuple(tensor.shape))
        ref.is_param = type(tensor).__name__ == "Parameter"
        ref.requires_grad, ref._tensor = bool(tensor.requires_grad), tensor.detach()
        return ref

    @property
    def dtype(self) -> str:
        return self.storage.dtype.name

    @property
    def itemsize(self) -> int:
        return self.storage.dtype.itemsize

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def is_floating(self) -> bool:
        return self.storage.dtype.is_floating

    def is_contiguous(self) -> bool:
        return self.numel <= 1 or self.stride == contiguous_stride(self.shape)

    def raw(self):
        """Bit-exact values as a read-only ndarray (bfloat16/float8 as unsigned ints of the same width)."""
        import numpy as np

        if self._tensor is not None:
            return _torch_raw(self._tensor)
        d = self.storage.dtype
        np_dtype = np.dtype(d.numpy) if d.numpy else np.dtype(f"<u{d.itemsize}")
        if self.numel == 0:
            return np.empty(self.shape, dtype=np_dtype)
        flat = self.storage.bytes_view().view(np_dtype)  # exactly numel * itemsize bytes
        if self.is_contiguous():
            arr = flat[self.offset: self.offset + self.numel].reshape(self.shape)
        else:
            arr = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape,
                                                  strides=[s * d.itemsize for s in self.stride], writeable=False)
        if arr.flags.writeable:
            arr.flags.writeable = False
        return arr

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Let the OS drop the mapped pages behind elements [start, stop) of this tensor (all of it by default) from
        this process's memory; values read later are faulted back in from the page cache. No-op in memory."""
        f = self.storage.file
        if f is None or self._tensor is not None or self.numel == 0:
            return
        stop = self.numel if stop is None else min(stop, self.numel)
        if not self.is_contiguous():
            start, stop = 0, 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        size = self.itemsize
        f.release(self.storage.offset + (self.offset + start) * size, (stop - start) * size)

    def numpy(self):
        """Values as a read-only ndarray; bfloat16 becomes float32 (a copy), everything else is a view."""
        import numpy as np

        arr = self.raw()
        if self.dtype == "bfloat16":
            return widen_bfloat16(arr)
        if self.storage.dtype.numpy is None:
            raise FormatError(f"cannot convert {self.dtype} values to numpy")
        return arr

    def to_torch(self):
        """A torch tensor with these values (imports torch); always a copy, so it outlives the file's mapping."""
        import torch

        if self._tensor is not None:
            return self._tensor
        arr = self.raw()
        import numpy as np

        t = torch.from_numpy(np.array(arr, copy=True)) if self.numel else torch.empty(self.shape)
        target = getattr(torch, self.dtype)
        if self.dtype == "bfloat16" or self.dtype.startswith("float8"):
            t = t.view(target)
        return t.to(target).reshape(self.shape)

    def __repr__(self):
        return f"TensorRef({self.dtype}, {list(self.shape)})"


def contiguous_stride(shape) -> tuple:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


def _torch_raw(t):
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view("<u2")
    return t.numpy()
