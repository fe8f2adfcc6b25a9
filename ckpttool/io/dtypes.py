"""One table of the element types we read: torch names, storage class names, safetensors codes, numpy dtypes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str          # torch name without 'torch.', e.g. 'float32'
    itemsize: int
    numpy: str | None  # numpy dtype string; None when numpy has no such type (read as unsigned ints, see `raw`)
    storage: str | None  # legacy typed-storage class name in `torch` ('FloatStorage'); None: UntypedStorage only
    st: str | None     # safetensors dtype code
    pack: int = 1      # values per stored byte (quint4x2: 2, quint2x4: 4); the tensor shape counts values

    @property
    def is_floating(self) -> bool:
        return self.name.startswith(("float", "bfloat", "complex"))

    @property
    def is_quantized(self) -> bool:
        return self.name.startswith(("qint", "quint"))


_TABLE = [
    DType("float32", 4, "<f4", "FloatStorage", "F32"),
    DType("float64", 8, "<f8", "DoubleStorage", "F64"),
    DType("float16", 2, "<f2", "HalfStorage", "F16"),
    DType("bfloat16", 2, None, "BFloat16Storage", "BF16"),
    DType("int64", 8, "<i8", "LongStorage", "I64"),
    DType("int32", 4, "<i4", "IntStorage", "I32"),
    DType("int16", 2, "<i2", "ShortStorage", "I16"),
    DType("int8", 1, "i1", "CharStorage", "I8"),
    DType("uint8", 1, "u1", "ByteStorage", "U8"),
    DType("bool", 1, "?", "BoolStorage", "BOOL"),
    DType("complex64", 8, "<c8", "ComplexFloatStorage", None),
    DType("complex128", 16, "<c16", "ComplexDoubleStorage", None),
    DType("uint16", 2, "<u2", "UInt16Storage", "U16"),
    DType("uint32", 4, "<u4", "UInt32Storage", "U32"),
    DType("uint64", 8, "<u8", "UInt64Storage", "U64"),
    # torch saves these through UntypedStorage + _rebuild_tensor_v3 (torch.storage._new_dtypes()); numpy has no
    # such types, so `raw()` gives unsigned ints of the element's width and `numpy()` widens where it can.
    DType("float8_e4m3fn", 1, None, None, "F8_E4M3"),
    DType("float8_e5m2", 1, None, None, "F8_E5M2"),
    DType("float8_e4m3fnuz", 1, None, None, None),
    DType("float8_e5m2fnuz", 1, None, None, None),
    DType("float8_e8m0fnu", 1, None, None, "F8_E8M0"),
    DType("float4_e2m1fn_x2", 1, None, None, None),  # two 4-bit values per element
    DType("complex32", 4, None, None, None),          # two float16
    DType("bits1x8", 1, None, None, None),
    DType("bits2x4", 1, None, None, None),
    DType("bits4x2", 1, None, None, None),
    DType("bits8", 1, None, None, None),
    DType("bits16", 2, None, None, None),
    # quantized storages: the integer representation; scale / zero point live in the tensor record
    DType("qint8", 1, "i1", "QInt8Storage", None),
    DType("quint8", 1, "u1", "QUInt8Storage", None),
    DType("qint32", 4, "<i4", "QInt32Storage", None),
    DType("quint4x2", 1, "u1", "QUInt4x2Storage", None, pack=2),
    DType("quint2x4", 1, "u1", "QUInt2x4Storage", None, pack=4),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_STORAGE = {d.storage: d for d in _TABLE if d.storage}
BY_ST = {d.st: d for d in _TABLE if d.st}
# Aliases torch accepts for the same types (torch.float, torch.half, torch.long, ...).
ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
           "short": "int16", "cfloat": "complex64", "cdouble": "complex128"}


def by_name(name: str) -> DType:
    name = ALIASES.get(name, name)
    try:
        return BY_NAME[name]
    except KeyError:
        from ckpttool.errors import FormatError
        raise FormatError(f"unsupported tensor dtype {name!r}") from None


def from_numpy(np_dtype) -> DType:
    """The DType of a numpy dtype (for writers)."""
    import numpy as np

    dt = np.dtype(np_dtype).newbyteorder("<") if np.dtype(np_dtype).byteorder == ">" else np.dtype(np_dtype)
    for d in _TABLE:
        if d.numpy and not d.is_quantized and np.dtype(d.numpy) == dt:
            return d
    from ckpttool.errors import CkptError
    raise CkptError(f"no checkpoint dtype for numpy dtype {dt}")


def widen_bfloat16(bits, out=None):
    """bfloat16 bit patterns (uint16) as their exact float32 values: the bits become the high half of a float32.

    ``out``: a 1-D uint32 scratch array of at least ``bits.size`` elements to reuse (for a 1-D chunk ``bits``);
    without it a new array of ``bits``' shape is returned."""
    import numpy as np

    if out is None:
        return (bits.astype(np.uint32) << 16).view(np.float32)
    u = out[: bits.size]
    np.copyto(u, bits)
    np.left_shift(u, 16, out=u)
    return u.view(np.float32)
