"""Lazy tensors: what a checkpoint says about a tensor, with bytes read only when asked for.

A `Storage` is a run of bytes in a file (memory-mapped on demand) or in memory. A `TensorRef` is a strided view of
a storage (dtype, shape, stride, element offset), exactly as torch stores it. Bounds are checked when the record is
made, so a header that claims more data than the file holds is an error before anything is allocated.
"""
from __future__ import annotations

import math
import mmap
import operator
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

    def retyped(self, dtype: DType) -> "Storage":
        """The same bytes read as another element type (an UntypedStorage named by _rebuild_tensor_v3)."""
        return Storage(self.key, dtype, self.nbytes // dtype.itemsize, self.file, self.offset, self.data)

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
        # map / min / sum instead of generators (one of these per tensor of a checkpoint): the same checks on ints
        shape = tuple(map(int, shape))
        if shape and min(shape) < 0:
            raise FormatError(f"negative tensor shape {shape}")
        if stride is None:
            stride = contiguous_stride(shape)
        stride = tuple(map(int, stride))
        if len(stride) != len(shape) or (stride and min(stride) < 0):
            raise FormatError(f"tensor stride {stride} does not fit shape {shape}")
        offset = int(offset)
        if offset < 0:
            raise FormatError(f"negative storage offset {offset}")
        numel = math.prod(shape)
        # the last element's index, offset + sum((n - 1) * s), as offset + sum(n * s) - sum(s)
        if numel and offset + sum(map(operator.mul, shape, stride)) - sum(stride) >= storage.numel * storage.dtype.pack:
            raise FormatError(f"tensor of shape {list(shape)} reaches past its storage {storage.key!r} "
                              f"({storage.numel} elements)")
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.is_param, self.requires_grad, self._tensor = is_param, requires_grad, None

    def as_parameter(self, requires_grad: bool) -> "TensorRef":
        self.is_param, self.requires_grad = True, requires_grad
        return self

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
    def nbytes(self) -> int:  # -(-numel * itemsize // pack), without the two property calls
        dtype = self.storage.dtype
        return -(-math.prod(self.shape) * dtype.itemsize // dtype.pack)

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
        if d.pack > 1:
            return self._unpacked()
        flat = self.storage.bytes_view().view(np_dtype)  # exactly numel * itemsize bytes
        if self.is_contiguous():
            arr = flat[self.offset: self.offset + self.numel].reshape(self.shape)
        else:
            arr = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape,
                                                  strides=[s * d.itemsize for s in self.stride], writeable=False)
        if arr.flags.writeable:
            arr.flags.writeable = False
        return arr

    def _unpacked(self):
        """Sub-byte values (quint4x2, quint2x4), lowest bits first, as one uint8 per value."""
        import numpy as np

        pack, bits = self.storage.dtype.pack, 8 // self.storage.dtype.pack
        if not self.is_contiguous() or self.offset % pack:
            raise FormatError(f"{self.dtype}: only contiguous, byte-aligned tensors can be read")
        raw = self.storage.bytes_view()[self.offset // pack:]
        shifts = (np.arange(pack, dtype=np.uint8) * bits)[None, :]
        vals = ((raw[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[: self.numel]
        return vals.reshape(self.shape)

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
        """Values as a read-only ndarray. Types numpy lacks are widened exactly (a copy): bfloat16 and the float8
        family to float32, complex32 to complex64; float4 pairs and bits* have no numeric value to widen to."""
        if self.storage.dtype.numpy is not None:
            return self.raw()
        return widen(self.raw(), self.dtype)

    def to_torch(self):
        """A torch tensor with these values (imports torch); always a copy, so it outlives the file's mapping."""
        import torch

        if self._tensor is not None:
            return self._tensor
        arr = self.raw()
        import numpy as np

        if self.storage.dtype.is_quantized:  # the integer representation; the quantizer lives in SpecialTensor
            return torch.from_numpy(np.array(arr, copy=True)).reshape(self.shape)
        target = getattr(torch, self.dtype)
        if not self.numel:
            return torch.empty(self.shape, dtype=target)
        if self.storage.dtype.numpy is None:  # bit patterns numpy cannot name: reinterpret in torch
            t = torch.from_numpy(np.array(arr, copy=True).view(f"<i{self.itemsize}" if self.itemsize > 1 else "i1"))
            return t.view(target).reshape(self.shape)
        return torch.from_numpy(np.array(arr, copy=True)).to(target).reshape(self.shape)

    def __repr__(self):
        return f"TensorRef({self.dtype}, {list(self.shape)})"


class SpecialTensor:
    """A tensor torch stores in another layout: quantized, sparse (COO/CSR/CSC/BSR/BSC), nested or meta. Its dtype,
    shape and layout details are facts; its component tensors (`parts`: int_repr / scales / zero_points, indices /
    values, nested buffer …) are ordinary TensorRefs. Commands that compute on values skip these."""

    __slots__ = ("layout", "dtype", "shape", "parts", "info", "is_param", "requires_grad")

    def __init__(self, layout: str, dtype: str, shape, parts: dict, info: dict):
        self.layout, self.dtype, self.shape, self.parts, self.info = layout, dtype, tuple(shape), parts, info
        self.is_param, self.requires_grad = False, False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.parts.values())

    def to_torch(self):
        """The same tensor in torch (imports torch): quantized from its int repr and quantizer, sparse from its
        components, nested from its buffer or values/offsets, meta from its shape."""
        import torch

        p = {k: v.to_torch() for k, v in self.parts.items()}
        lay = self.layout
        if lay == "quantized":
            if self.parts["int_repr"].storage.dtype.pack > 1:  # sub-byte: torch quantizes its exact values again
                return torch.quantize_per_tensor((p["int_repr"].float() - self.info["zero_point"])
                                                 * self.info["scale"], self.info["scale"],
                                                 self.info["zero_point"], getattr(torch, self.dtype))
            if "scales" in p:
                return torch._make_per_channel_quantized_tensor(p["int_repr"], p["scales"], p["zero_points"],
                                                                self.info["axis"])
            return torch._make_per_tensor_quantized_tensor(p["int_repr"], self.info["scale"],
                                                           self.info["zero_point"])
        if lay == "sparse_coo":
            return torch.sparse_coo_tensor(p["indices"], p["values"], self.shape,
                                           is_coalesced=self.info.get("coalesced"))
        if lay.startswith("sparse_"):
            make = {"sparse_csr": torch.sparse_csr_tensor, "sparse_csc": torch.sparse_csc_tensor,
                    "sparse_bsr": torch.sparse_bsr_tensor, "sparse_bsc": torch.sparse_bsc_tensor}[lay]
            return make(p["compressed_indices"], p["plain_indices"], p["values"], self.shape)
        if lay == "meta":
            return torch.empty_strided(self.shape, self.info["stride"], dtype=getattr(torch, self.dtype),
                                       device="meta")
        if lay == "nested":
            return torch._nested_view_from_buffer(p["buffer"], p["sizes"], p["strides"], p["offsets"]).clone()
        if lay == "jagged":
            return torch.nested.nested_tensor_from_jagged(p["values"], p["offsets"], lengths=p.get("lengths"))
        raise FormatError(f"cannot rebuild a {lay} tensor")

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.info.items() if k != "stride")
        return f"{self.layout} {self.dtype} {list(self.shape)}" + (f" ({extra})" if extra else "")

    def __repr__(self):
        return f"SpecialTensor({self.describe()})"


# float8 / e8m0 decoding tables: (exponent bits, mantissa bits, bias, variant)
_MINIFLOATS = {"float8_e4m3fn": (4, 3, 7, "fn"), "float8_e5m2": (5, 2, 15, "ieee"),
               "float8_e4m3fnuz": (4, 3, 8, "fnuz"), "float8_e5m2fnuz": (5, 2, 16, "fnuz")}
_LUTS: dict = {}


def _minifloat_lut(name: str):
    import numpy as np

    if name in _LUTS:
        return _LUTS[name]
    if name == "float8_e8m0fnu":  # 2**(e-127), 0xFF is NaN
        lut = np.full(256, np.nan, dtype=np.float32)
        lut[:255] = np.ldexp(1.0, np.arange(255) - 127)
    else:
        e_bits, m_bits, bias, kind = _MINIFLOATS[name]
        codes = np.arange(256)
        sign = np.where(codes >> 7, -1.0, 1.0)
        exp, man = (codes >> m_bits) & ((1 << e_bits) - 1), codes & ((1 << m_bits) - 1)
        normal = np.ldexp(1.0 + man / (1 << m_bits), exp - bias)
        sub = np.ldexp(man / (1 << m_bits), 1 - bias)
        lut = (sign * np.where(exp == 0, sub, normal)).astype(np.float32)
        top = exp == (1 << e_bits) - 1
        if kind == "ieee":
            lut[top & (man == 0)] = sign[top & (man == 0)] * np.inf
            lut[top & (man != 0)] = np.nan
        elif kind == "fn":
            lut[top & (man == (1 << m_bits) - 1)] = np.nan
        else:  # fnuz: no negative zero, 0x80 is the only NaN
            lut[0x80] = np.nan
    _LUTS[name] = lut
    return lut


def widen(raw, dtype: str):
    """Exact float32 / complex64 values of bit patterns numpy has no type for."""
    import numpy as np

    if dtype == "bfloat16":
        return widen_bfloat16(raw)
    if dtype in _MINIFLOATS or dtype == "float8_e8m0fnu":
        return _minifloat_lut(dtype)[raw]
    if dtype == "complex32":
        halves = np.ascontiguousarray(raw).view("<f2").astype(np.float32)
        return halves.view(np.complex64)
    raise FormatError(f"{dtype} values have no numpy form (read them with raw())")


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
