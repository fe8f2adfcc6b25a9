"""`load(path)`: open any supported checkpoint without running code from it."""
from __future__ import annotations

import os
from collections import OrderedDict

from ckpttool.errors import FormatError, UnsafeError
from ckpttool.io import allowlist as AL
from ckpttool.io import dcp, safetensors_file, safety, torchfile
from ckpttool.io.detect import detect, index_file
from ckpttool.io.layout import Layout, StateDict, count_tensors, plain, recognise, state_dict_of
from ckpttool.io.tensor import MappedFile, TensorRef
from ckpttool.io.unpickle import Budget, Judge, unpickle


class Checkpoint:
    """A checkpoint opened for reading. Only headers and the pickle are read; tensor bytes stay on disk.

    `verdict` ('data' | 'not verified' | 'code') and `global_uses` say what the file names and how; see
    `ckpttool.io.safety`."""

    def __init__(self, path: str, fmt: str, root, judge: Judge, file_bytes: int, trusted: bool = False,
                 strict: bool = False):
        self.path, self.format, self.root, self.judge = path, fmt, root, judge
        self.file_bytes, self.trusted, self.strict = file_bytes, trusted, strict
        self.layout: Layout = recognise(root)

    # --- safety --------------------------------------------------------------------------------------------
    @property
    def verdict(self) -> str:
        return "trusted" if self.trusted else self.judge.verdict

    @property
    def global_uses(self) -> list[dict]:
        return self.judge.global_uses()

    @property
    def safety_summary(self) -> str:
        if self.trusted:
            return "trusted: unpickled for real with --trust (code in the file ran)"
        return safety.summary(self.verdict, self.global_uses)

    @property
    def globals(self) -> dict:
        """{global name: its worst verdict}."""
        out: dict = {}
        for u in self.global_uses:
            out.setdefault(u["name"], u["verdict"])
        return out

    # --- facts ---------------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return self.layout.meta

    @property
    def weights_key(self) -> str | None:
        return self.layout.weights_key

    @property
    def foreign_globals(self) -> list[str]:
        """Globals beyond torch's own weights_only defaults (e.g. mmengine HistoryBuffer, numpy, or a payload)."""
        return sorted({u["name"] for u in self.global_uses
                       if not (u["allowed_by"] and AL.ALLOWLIST.get(u["allowed_by"], AL.Entry("", frozenset(), ""))
                               .torch)})

    @property
    def suspicious_globals(self) -> list[str]:
        """Globals whose use would run code under a real unpickle."""
        return sorted({u["name"] for u in self.global_uses if u["verdict"] == "code"})

    @property
    def unverified_globals(self) -> list[str]:
        return sorted({u["name"] for u in self.global_uses if u["verdict"] == "not verified"})

    def require_safe(self, strict: bool | None = None) -> None:
        """Refuse a file whose verdict is code (and, when strict, not verified): UnsafeError, exit 2 in the CLI."""
        strict = self.strict if strict is None else strict
        if self.trusted:
            return
        if self.verdict == "code":
            raise UnsafeError(f"{self.path}: refusing a file that references code that would run when loaded "
                              f"({', '.join(self.suspicious_globals) or 'see ckpt inspect'}); nothing was executed "
                              "— `ckpt inspect` lists it")
        if strict and self.verdict == "not verified":
            raise UnsafeError(f"{self.path}: --strict refuses classes outside the allow-list "
                              f"({', '.join(self.unverified_globals)}); nothing was executed — pass --allow-global "
                              "NAME for a class you trust")

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


def load(path: str, trust: bool = False, allow_globals=(), allowlist=None, strict: bool | None = None) -> Checkpoint:
    """Open `path` (file or folder) of any supported format without running code from it.

    `allow_globals` adds names to the allow-list (like torch's add_safe_globals; also `CKPT_ALLOW_GLOBALS` and the
    CLI's `--allow-global`); `allowlist` replaces the list itself; `strict` makes `require_safe` refuse 'not
    verified' files too. `trust=True` unpickles for real: it RUNS CODE from the file, exactly like
    `torch.load(weights_only=False)`; use it only for files you made yourself."""
    path = os.fspath(path)
    fmt = detect(path)
    if trust and fmt in ("torch-zip", "torch-legacy", "pickle"):
        return _load_trusted(path, fmt)
    pol = safety.current()
    names = tuple(dict.fromkeys((*pol.allow_globals, *allow_globals)))
    judge = Judge(AL.extended(names, allowlist) if names else allowlist)
    strict = pol.strict if strict is None else strict
    size = _size(path)
    try:
        if fmt == "torch-zip":
            root, _ = torchfile.read_zip(MappedFile(path), judge=judge)
        elif fmt == "torch-legacy":
            root, _ = torchfile.read_legacy(path, MappedFile(path), judge)
        elif fmt == "pickle":
            root = _read_plain_pickle(path, judge)
        elif fmt == "safetensors":
            sd, meta = safetensors_file.read_safetensors(path, MappedFile(path))
            root = _with_meta(sd, meta)
        elif fmt == "safetensors-sharded":
            sd, meta, _ = safetensors_file.read_index(index_file(path))
            root = _with_meta(sd, meta)
        elif fmt == "torch-sharded":
            root = _read_torch_shards(index_file(path), judge)
        else:  # dcp
            flat, _ = dcp.read_dcp(path, judge)
            root = _nest_first_level(flat)
    except FormatError as exc:
        msg = str(exc)
        if judge.verdict == "code":  # a payload broke the rest of the file: the verdict is still the news
            judge.notes.append(f"the file could not be read past its payload: {msg}")
            return Checkpoint(path, fmt, {}, judge, size, strict=strict)
        raise FormatError(msg if msg.startswith(path) else f"{path}: {msg}") from exc
    except (OSError, RecursionError, MemoryError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            EOFError, OverflowError, NotImplementedError, LookupError, ArithmeticError) as exc:
        raise FormatError(f"{path}: corrupt {fmt} file ({type(exc).__name__}: {str(exc)[:200]})") from exc
    return Checkpoint(path, fmt, root, judge, size, strict=strict)


def load_pickle(path: str, trust: bool = False):
    """Any pickle-based file (an mmaction2 `--dump`, a torch checkpoint) as plain data; tensors are TensorRef.
    Refuses files that reference code (UnsafeError) unless trust=True, which really unpickles them."""
    ck = load(path, trust=trust)
    if not trust:
        ck.require_safe()
    return ck.root


def _read_plain_pickle(path: str, judge: Judge):
    import mmap

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with mm:
        root, _ = unpickle(mm, bytes_loader=torchfile.read_legacy_bytes, judge=judge,
                           budget=Budget(file_bytes=len(mm)))
    return root


def _read_torch_shards(index_path: str, judge: Judge) -> dict:
    """transformers' `pytorch_model.bin.index.json`: a weight_map onto torch files, each read like any other."""
    weight_map, shards, _ = safetensors_file.read_weight_map(index_path)
    loaded = {}
    for shard, spath in shards.items():
        mf = MappedFile(spath)
        fmt = detect(spath)
        if fmt == "torch-zip":
            loaded[shard], _ = torchfile.read_zip(mf, judge=judge)
        elif fmt == "torch-legacy":
            loaded[shard], _ = torchfile.read_legacy(spath, mf, judge)
        else:
            raise FormatError(f"shard {shard} is a {fmt} file, not a torch file")
        if not isinstance(loaded[shard], dict):
            raise FormatError(f"shard {shard} does not hold a state dict")
    out = {}
    for name, shard in weight_map.items():
        if name not in loaded[shard]:
            raise FormatError(f"index maps {name!r} to {shard}, which does not hold it")
        out[name] = loaded[shard][name]
    return out


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
    return Checkpoint(path, fmt, _wrap_tensors(obj), Judge(), _size(path), trusted=True)


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
