"""Which globals a pickle may reference, and which of them would run code if unpickled for real.

Nothing here is ever imported or called: the restricted unpickler only looks names up in these tables.
- DATA globals rebuild tensors, containers and numpy values; the unpickler replaces each with its own code.
- KNOWN globals are classes of the libraries whose checkpoints we read (mmengine HistoryBuffer, DCP metadata…); they
  become inert records, listed by `inspect`, harmless.
- SUSPICIOUS globals would execute code, touch the system or reach arbitrary attributes. Any file that names one is
  refused by every command except `inspect`, which lists it.
Everything else is unknown: inert, listed, allowed (a user's own class, an enum, …).
"""
from __future__ import annotations

# Module roots whose every member could act on the system when called.
_DANGEROUS_ROOTS = {
    "os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "shutil", "socket", "pty", "code", "codeop",
    "ctypes", "marshal", "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "webbrowser", "multiprocessing",
    "signal", "asyncio", "threading", "_thread", "types", "inspect", "operator", "functools", "platform", "tempfile",
    "io", "_io", "glob", "commands", "popen2", "pdb", "bdb", "timeit", "trace", "profile", "cProfile",
    "urllib", "http", "ftplib", "smtplib", "requests", "zipimport", "pkgutil", "site", "sysconfig", "gc", "weakref",
    "bz2", "gzip", "lzma", "zipfile", "tarfile", "sqlite3", "xmlrpc", "telnetlib", "ensurepip",
    "venv", "distutils", "setuptools", "pip", "posixpath", "ntpath", "nturl2path", "imp",
}
# builtins that are plain data constructors; every other builtin (eval, exec, getattr, __import__, open…) is suspicious.
SAFE_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str", "bytes",
                 "bytearray", "slice", "range", "object", "NotImplemented", "Ellipsis"}

# Inert but expected: classes that real checkpoints of the supported libraries carry.
KNOWN_PREFIXES = (
    "mmengine.logging.history_buffer.", "mmengine.config.", "mmengine.structures.", "mmcv.",
    "mmaction.structures.", "mmdet.structures.", "mmdet3d.structures.",
    "torch.distributed.checkpoint.metadata.", "torch.distributed.checkpoint.filesystem.",
    "torch.distributed.checkpoint.planner.", "torch.distributed._shard.",
    "argparse.Namespace", "datetime.", "decimal.Decimal", "uuid.UUID", "enum.", "omegaconf.",
    "numpy.random.", "numpy.core.multiarray.scalar", "collections.", "typing.", "fractions.Fraction",
    "timm.", "pytorch_lightning.", "lightning.", "transformers.",
)

# torch / numpy members that are safe to name (data); any other member of those packages is suspicious,
# because e.g. torch.load, torch.hub.load, numpy.load(allow_pickle) or numpy.testing.runstring run code.
TORCH_DATA = {
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2", "torch._tensor._rebuild_from_type", "torch.storage._load_from_bytes",
    "torch.Size", "torch.device", "torch.Tensor", "torch.nn.parameter.Parameter", "torch.storage.UntypedStorage",
    "torch.storage.TypedStorage", "torch.serialization._get_layout", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass", "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_device_tensor_from_numpy", "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch.nn.modules.container.ParameterDict", "torch.nn.modules.container.ParameterList",
}
TORCH_CONSTANT_NAMES = {  # torch.<name> constants: dtypes, layouts, memory formats
    "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged",
    "contiguous_format", "channels_last", "channels_last_3d", "preserve_format", "per_tensor_affine",
    "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric", "per_channel_affine_float_qparams",
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32", "int",
    "int16", "short", "int8", "uint8", "bool", "complex64", "cfloat", "complex128", "cdouble", "uint16",
    "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "qint8", "quint8", "qint32", "quint4x2",
}
NUMPY_DATA = {"multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer", "dtype", "ndarray",
              "dtypes.Float64DType", "dtypes.Float32DType", "dtypes.Float16DType", "dtypes.Int64DType",
              "dtypes.Int32DType", "dtypes.Int16DType", "dtypes.Int8DType", "dtypes.UInt8DType", "dtypes.BoolDType",
              "dtypes.UInt16DType", "dtypes.UInt32DType", "dtypes.UInt64DType", "dtypes.StrDType",
              "dtypes.BytesDType", "dtypes.ObjectDType", "dtypes.Complex64DType", "dtypes.Complex128DType"}


def classify(module: str, name: str) -> str:
    """'data' | 'known' | 'suspicious' | 'unknown' for the global `module.name`."""
    qual = f"{module}.{name}"
    root = module.split(".")[0]
    if root in ("builtins", "__builtin__", "__builtins__", "exceptions"):
        return "data" if name in SAFE_BUILTINS else "suspicious"
    if root in _DANGEROUS_ROOTS or "." in name:
        return "suspicious"
    if root == "torch":
        if qual in TORCH_DATA or (module == "torch" and (name.endswith("Storage") or name in TORCH_CONSTANT_NAMES)):
            return "data"
        if qual.startswith(("torch.distributed.checkpoint.metadata.", "torch.distributed.checkpoint.filesystem.",
                            "torch.distributed.checkpoint.planner.", "torch.distributed._shard.")):
            return "known"
        return "suspicious"
    if root == "numpy":
        rest = module.split(".", 1)[1] if "." in module else ""
        rest = rest.removeprefix("core.").removeprefix("_core.")
        key = f"{rest}.{name}" if rest not in ("", "core", "_core") else name
        if key in NUMPY_DATA:
            return "data"
        if module.startswith("numpy.random") or qual == "numpy.core.multiarray.scalar":
            return "known"
        return "suspicious"
    if root == "_codecs" and name == "encode":
        return "data"
    if root == "collections" and name in ("OrderedDict", "defaultdict", "Counter", "deque", "namedtuple"):
        return "data" if name != "namedtuple" else "suspicious"
    if root == "copyreg" and name in ("_reconstructor", "__newobj__", "__newobj_ex__"):
        return "data"
    if root == "pathlib" and name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath",
                                      "PureWindowsPath"):
        return "known"
    if root == "copyreg":
        return "suspicious"
    if qual.startswith(KNOWN_PREFIXES):
        return "known"
    return "unknown"
