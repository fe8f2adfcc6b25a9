"""The allow-list: the only globals a pickle may name for `ckpt` to call the file **data**.

A pickle names globals (functions and classes) that a real unpickler imports and then calls (REDUCE), instantiates
(NEWOBJ, then BUILD), passes around as values, or reaches attributes of. `ckpt` imports none of them. It judges each
use against this list:

- a global on the list, used only in the ways its entry allows (`uses`), is data;
- a class outside the list that is only instantiated or referenced is **not verified**: torch.load would import its
  module and run the class's own `__new__` / `__setstate__`, which `ckpt` cannot see;
- any call of a global outside the list, any attribute chain through one, any use an entry does not allow is **code**.

Entries start from what torch's own `weights_only=True` unpickler accepts (`torch` = True) and add the data classes
that genuine checkpoints of the libraries we read carry, each only after judging that building it runs nothing but its
own data handling. Every entry must be needed by a file of the genuine corpus (tests/test_genuine_corpus.py checks
it). docs/security.md prints this table (`python -m ckpttool.io.allowlist` regenerates it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

CALL, INSTANTIATE, REFERENCE, ATTRIBUTE = "call", "instantiate", "reference", "attribute"


@dataclass(frozen=True)
class Entry:
    name: str                  # 'module.qualname' as the unpickler resolves it (after _compat_pickle mapping)
    uses: frozenset            # the uses that are data: call / instantiate / reference / attribute
    why: str                   # what it is, and the call shapes `ckpt` accepts (checked by its stand-in)
    torch: bool = False        # on torch 2.13's weights_only default list
    aliases: tuple = ()        # other spellings of the same object (numpy.core.* vs numpy._core.*)
    attributes: frozenset | None = None  # names getattr may take on it (None: any public name)


def _e(name, uses, why, torch=False, aliases=(), attributes=None):
    return Entry(name, frozenset(uses.split()), why, torch, tuple(aliases),
                 frozenset(attributes) if attributes is not None else None)


_TORCH_DTYPES = ("float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool complex64 complex128 "
                 "complex32 uint16 uint32 uint64 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz "
                 "float8_e8m0fnu float4_e2m1fn_x2 bits1x8 bits2x4 bits4x2 bits8 bits16 qint8").split()
_TORCH_STORAGES = ("FloatStorage DoubleStorage HalfStorage BFloat16Storage LongStorage IntStorage ShortStorage "
                   "CharStorage ByteStorage BoolStorage ComplexFloatStorage ComplexDoubleStorage QInt8Storage "
                   "QUInt8Storage QInt32Storage QUInt4x2Storage QUInt2x4Storage").split()
_REBUILD = {
    "_rebuild_tensor_v2": "(storage, offset, size, stride, requires_grad, empty hooks[, metadata])",
    "_rebuild_tensor_v3": "(UntypedStorage, offset, size, stride, requires_grad, empty hooks, dtype[, metadata])",
    "_rebuild_parameter": "(tensor, requires_grad, empty hooks)",
    "_rebuild_qtensor": "(storage, offset, size, stride, (qscheme, scale(s), zero point(s)[, axis]), ...)",
    "_rebuild_sparse_tensor": "(layout, (indices..., values, size[, coalesced])): component tensors",
    "_rebuild_meta_tensor_no_storage": "(dtype, size, stride, requires_grad): shape only, no data",
    "_rebuild_nested_tensor": "(buffer tensor, sizes tensor, strides tensor, offsets tensor)",
}

ENTRIES = [
    _e("collections.OrderedDict", "call reference", "ordered dict; built empty, filled by SETITEMS", torch=True),
    _e("collections.Counter", "call", "(dict of plain keys to counts)", torch=True),
    _e("torch.Size", "call", "tuple of ints", torch=True),
    _e("torch.device", "call", "('cpu' | 'cuda'[, index]): a device name string", torch=True),
    _e("torch.serialization._get_layout", "call", "('torch.sparse_coo' …): a layout name", torch=True),
    _e("torch.Tensor", "reference", "the tensor class, as _rebuild_from_type_v2's type", torch=True),
    _e("torch._tensor._rebuild_from_type_v2", "call",
       "(allow-listed rebuild function, tensor class, args, plain state)", torch=True),
    _e("torch.storage.UntypedStorage", "reference", "storage class named in a persistent id (bytes)", torch=True),
    _e("builtins.set", "call", "(list of hashable plain values)", torch=True),
    _e("_codecs.encode", "call", "(str, 'latin1'): how protocol 2 spells bytes", torch=True),
    *[_e(f"torch._utils.{name}", "call", shape, torch=True) for name, shape in _REBUILD.items()],
    *[_e(f"torch.{name}", "reference", "dtype constant", torch=True) for name in _TORCH_DTYPES],
    *[_e(f"torch.{name}", "reference", "typed storage class named in a persistent id", torch=True)
      for name in _TORCH_STORAGES],
    *[_e(f"torch.{name}", "reference", "quantization scheme constant", torch=True)
      for name in ("per_tensor_affine", "per_channel_affine")],
    # --- additions: plain Python and torch ------------------------------------------------------------------
    _e("torch.storage._load_from_bytes", "call", "(bytes of a legacy torch file): how pickle.dumps(tensor) stores "
       "tensors (mmaction2 --dump files); the embedded file is judged with the same rules"),
    _e("builtins.int", "reference call", "the int type as a value (protocol 2 writes __builtin__.long); "
       "int(str | number)"),
    _e("builtins.dict", "reference", "the dict type as a value (OmegaConf metadata; defaultdict factory)"),
    _e("builtins.list", "reference", "the list type as a value (OmegaConf metadata)"),
    _e("typing.Any", "reference", "the typing.Any marker as a value (OmegaConf metadata)"),
    _e("collections.defaultdict", "call", "(factory): the factory must be builtins.dict, list, set or int; filled "
       "by SETITEMS (Lightning hyper-parameters)"),
    _e("_io.BytesIO", "instantiate", "an in-memory byte buffer: NEWOBJ + BUILD with (bytes, position, dict) "
       "(DCP stores such items)"),
    _e("builtins.getattr", "call", "(allow-listed class, public name): the result is a reference and is never "
       "called (how protocol 2 pickles methods such as HistoryBuffer.min)"),
    # --- numpy ---------------------------------------------------------------------------------------------
    _e("numpy.core.multiarray._reconstruct", "call", "(numpy.ndarray, (0,), b'b'): an empty array record, filled "
       "only by ckpt from BUILD's (version, shape, dtype, fortran, bytes); object dtypes refused",
       aliases=("numpy._core.multiarray._reconstruct",)),
    _e("numpy.core.numeric._frombuffer", "call", "(bytes, dtype, shape, order): how protocol 5 pickles arrays; "
       "the bytes must match the shape exactly", aliases=("numpy._core.numeric._frombuffer",)),
    _e("numpy.ndarray", "reference", "the array class, as _reconstruct's subtype"),
    _e("numpy.dtype", "call", "(kind string, False, True) + BUILD state: bool, int, uint, float, complex, bytes "
       "and str kinds only; never object or structured"),
    _e("numpy.core.multiarray.scalar", "call", "(dtype, bytes of exactly one element)",
       aliases=("numpy._core.multiarray.scalar",)),
    # --- libraries whose checkpoints we read ----------------------------------------------------------------
    _e("mmengine.logging.history_buffer.HistoryBuffer", "instantiate attribute",
       "mmengine message hub buffer: NEWOBJ + BUILD with a dict of arrays and ints; its statistics methods are "
       "pickled as getattr(HistoryBuffer, 'min') references"),
    _e("mmengine.optim.scheduler.param_scheduler.OneCycleParamScheduler", "attribute",
       "its annealing function is pickled as getattr(OneCycleParamScheduler, '_annealing_cos'), a reference",
       attributes=("_annealing_cos", "_annealing_linear")),
    *[_e(f"omegaconf.{name}", "instantiate", "OmegaConf container / node: NEWOBJ + BUILD; its __setstate__ only "
         "updates __dict__ (Lightning hyper-parameters)")
      for name in ("dictconfig.DictConfig", "listconfig.ListConfig", "nodes.AnyNode", "base.Metadata",
                   "base.ContainerMetadata")],
    _e("transformers.training_args.TrainingArguments", "instantiate", "transformers Trainer arguments dataclass "
       "(training_args.bin): NEWOBJ + BUILD, no __setstate__"),
    _e("transformers.trainer_pt_utils.AcceleratorConfig", "instantiate", "dataclass inside TrainingArguments"),
    *[_e(f"transformers.{name}", "call", "(str): an Enum member looked up by value")
      for name in ("trainer_utils.IntervalStrategy", "trainer_utils.SaveStrategy", "trainer_utils.HubStrategy",
                   "trainer_utils.SchedulerType", "training_args.OptimizerNames")],
    _e("accelerate.utils.dataclasses.DistributedType", "call", "(str): an Enum member looked up by value"),
    _e("accelerate.state.PartialState", "instantiate", "accelerate process state inside TrainingArguments: NEWOBJ "
       "+ BUILD into the instance's own __dict__ (its __init__, which shares state, does not run)"),
    # nested jagged tensors (torch registers these with add_safe_globals when torch.nested is imported)
    _e("torch.nested._internal.nested_tensor._rebuild_njt", "call", "(dict of values / offsets / lengths tensors "
       "and ints), called through _rebuild_from_type_v2"),
    _e("torch.nested._internal.nested_tensor.NestedTensor", "reference instantiate",
       "the jagged tensor class, as _rebuild_from_type_v2's type"),
    _e("torch._dynamo.decorators._DimRange", "instantiate", "frozen dataclass (dim, min, max) in NJT metadata"),
    _e("argparse.Namespace", "instantiate", "timm / torchvision training args: NEWOBJ + BUILD with a dict"),
    _e("pathlib.PosixPath", "call", "(str parts): a path, parsed from its strings"),
    # torch.distributed.checkpoint `.metadata`: torch's own dataclasses, NEWOBJ + BUILD with plain fields
    *[_e(f"torch.distributed.checkpoint.metadata.{name}", "instantiate", "DCP metadata dataclass")
      for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                   "TensorProperties", "MetadataIndex", "StorageMeta")],
    _e("torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING", "call",
       "(int): an Enum member looked up by value (TensorProperties' memory format)"),
    _e("torch.distributed.checkpoint.filesystem._StorageInfo", "instantiate",
       "DCP file location dataclass (relative path, offset, length)"),
]

ALLOWLIST: dict[str, Entry] = {}
for _entry in ENTRIES:
    for _name in (_entry.name, *_entry.aliases):
        ALLOWLIST[_name] = _entry


def lookup(name: str, allowlist: Mapping[str, Entry] | None = None) -> Entry | None:
    return (ALLOWLIST if allowlist is None else allowlist).get(name)


def extended(extra_names, allowlist: Mapping[str, Entry] | None = None) -> dict[str, Entry]:
    """The list plus user-named globals (`--allow-global`, like torch's add_safe_globals): every use allowed."""
    out = dict(ALLOWLIST if allowlist is None else allowlist)
    for name in extra_names:
        out[name] = Entry(name, frozenset({CALL, INSTANTIATE, REFERENCE, ATTRIBUTE}), "allowed by the user")
    return out


def markdown_table() -> str:
    rows = ["| global | uses | accepted shape / why | torch default |", "|---|---|---|---|"]
    for e in ENTRIES:
        spell = e.name + "".join(f" (also `{a}`)" for a in e.aliases)
        rows.append(f"| `{spell}` | {', '.join(sorted(e.uses))} | {e.why} | {'yes' if e.torch else ''} |")
    return "\n".join(rows)


BEGIN, END = "<!-- allowlist:begin -->", "<!-- allowlist:end -->"


def with_table(doc: str) -> str:
    """`doc` with the text between the allow-list markers replaced by the current table."""
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown_table()}\n{END}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        path = sys.argv[2]
        with open(path, encoding="utf-8") as f:
            doc = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(with_table(doc))
    else:
        print(markdown_table())
