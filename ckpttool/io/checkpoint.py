"""`load(path)`: open any supported checkpoint without running code from it."""
from __future__ import annotations

import os
from collections import OrderedDict

from ckpttool.errors import CkptError, FormatError, UnsafeError
from ckpttool.io import dcp, safetensors_file, torchfile
from ckpttool.io.detect import detect, index_file
from ckpttool.io.layout import Layout, StateDict, count_tensors, plain, recognise, state_dict_of
from ckpttool.io.tensor import MappedFile, TensorRef
from ckpttool.io.unpickle import unpickle


class Checkpoint:
    """A checkpoint opened for reading. Only headers and the pickle are read; tensor bytes stay on disk."""

    def __init__(self, path: str, fmt: str, root, globals_: dict, file_bytes: int, trusted: bool = False):
        self.path, self.format, self.root, self.globals = path, fmt, root, globals_
        self.file_bytes, self.trusted = file_bytes, trusted
        self.layout: Layout = recognise(root)

    # --- facts ---------------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return self.layout.meta

    @property
    def weights_key(self) -> str | None:
        return self.layout.weights_key

    @property
    def foreign_globals(self) -> list[str]:
        """Globals that are neither tensors nor plain containers (e.g. mmengine HistoryBuffer, or a payload)."""
        return sorted(g for g, kind in self.globals.items() if kind != "data")

    @property
    def suspicious_globals(self) -> list[str]:
        return sorted(g for g, kind in self.globals.items() if kind == "suspicious")

    def require_safe(self) -> None:
        """Refuse files that reference code which would run under a real unpickle (exit 2 in the CLI)."""
        bad = self.suspicious_globals
        if bad:
            raise UnsafeError(f"{self.path}: refusing a file that references code that would run when loaded "
                              f"({', '.join(bad)}); nothing was executed — `ckpt inspect` lists it")

    def sections(self) -> dict:
        """Top-level entries with what they hold: tensors and bytes, or the kind of value."""
        if not isinstance(self.root, dict):
            return {}
        if self.layout.weights_key is None and self.layout.kind == "state-dict":  # the file is the state dict
            n, b = count_tensors(self.root)
            extra = {"__metadata__": {"entries": len(self.root["__metadata__"])}} if "__metadata__" in self.root else {}
            return {"(state dict)": {"tensors": n, "bytes": b}, **extra}
        out = {}
        for key, value in self.root.items():
            n, b = count_tensors(value)
            if n:
                out[str(key)] = {"tensors": n, "bytes": b}
            elif isinstance(value, dict):
                out[str(key)] = {"entries": len(value)}
            else:
                out[str(key)] = {"value": plain(value) if not isinstance(value, str) or len(value) < 80
                                 else f"<text, {len(value)} chars>"}
        return out

    def state_dict(self, section: str | None = None) -> StateDict:
        """The weights as key -> TensorRef (`module.`/`_orig_mod.` stripped when every key has it)."""
        return state_dict_of(self.root, self.layout, section)

    def __repr__(self):
        return f"Checkpoint({self.path!r}, {self.format}, {self.layout.kind})"


def load(path: str, trust: bool = False) -> Checkpoint:
    """Open `path` (file or folder) of any supported format. `trust=True` unpickles for real: it RUNS CODE from
    the file, exactly like `torch.load(weights_only=False)`; use it only for files you made yourself."""
    path = os.fspath(path)
    fmt = detect(path)
    if trust and fmt in ("torch-zip", "torch-legacy", "pickle"):
        return _load_trusted(path, fmt)
    size = _size(path)
    try:
        if fmt == "torch-zip":
            root, g = torchfile.read_zip(MappedFile(path))
        elif fmt == "torch-legacy":
            root, g = torchfile.read_legacy(path, MappedFile(path))
        elif fmt == "pickle":
            root, g = _read_plain_pickle(path)
        elif fmt == "safetensors":
            sd, meta = safetensors_file.read_safetensors(path, MappedFile(path))
            root, g = _with_meta(sd, meta), {}
        elif fmt == "safetensors-sharded":
            sd, meta, _ = safetensors_file.read_index(index_file(path))
            root, g = _with_meta(sd, meta), {}
        else:  # dcp
            flat, g = dcp.read_dcp(path)
            root = _nest_first_level(flat)
    except FormatError as exc:
        msg = str(exc)
        raise FormatError(msg if msg.startswith(path) else f"{path}: {msg}") from exc
    except (OSError, RecursionError, MemoryError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            EOFError, OverflowError, NotImplementedError, LookupError, ArithmeticError) as exc:
        raise FormatError(f"{path}: corrupt {fmt} file ({type(exc).__name__}: {exc})") from exc
    return Checkpoint(path, fmt, root, g, size)


def load_pickle(path: str, trust: bool = False):
    """Any pickle-based file (an mmaction2 `--dump`, a torch checkpoint) as plain data; tensors are TensorRef.
    Refuses files that reference code (UnsafeError) unless trust=True, which really unpickles them."""
    ck = load(path, trust=trust)
    if not trust:
        ck.require_safe()
    return ck.root


def _read_plain_pickle(path: str):
    with open(path, "rb") as f:
        return unpickle(f.read(), bytes_loader=torchfile.read_legacy_bytes)


def _with_meta(sd: dict, meta: dict):
    if meta:
        return {"__metadata__": meta, **sd}
    return sd


def _nest_first_level(flat: dict) -> dict:
    """DCP keys are flat FQNs ('model.layer.weight'); group by the first component so layouts are recognised."""
    out: dict = {}
    for fqn, value in flat.items():
        head, _, rest = fqn.partition(".")
        if rest:
            group = out.setdefault(head, {})
            if not isinstance(group, dict):
                out[head] = group = {"": group}
            group[rest] = value
        else:
            out[fqn] = value
    return out


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def _load_trusted(path: str, fmt: str) -> Checkpoint:
    """A real torch.load. Runs code from the file: only behind the explicit --trust flag."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=fmt == "torch-zip")
    except Exception as exc:
        raise FormatError(f"{path}: torch.load failed ({type(exc).__name__}: {exc})") from exc
    return Checkpoint(path, fmt, _wrap_tensors(obj), {}, _size(path), trusted=True)


def _wrap_tensors(obj, depth=0):
    import torch

    if isinstance(obj, torch.Tensor):
        return TensorRef.from_torch(obj)
    if depth > 64:
        return obj
    if isinstance(obj, dict):  # OrderedDict stays ordered; other dict subclasses become plain dicts
        cls = type(obj) if type(obj) in (dict, OrderedDict) else dict
        return cls((k, _wrap_tensors(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        values = [_wrap_tensors(v, depth + 1) for v in obj]
        return tuple(values) if type(obj) is tuple else values
    return obj
