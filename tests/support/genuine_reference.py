"""torch's own reading of the genuine corpus, as fingerprints — the reference tests/test_genuine_corpus.py compares
ckpt against.

Runs in the corpus interpreter (``.venv-corpus``, the one with transformers / timm / lightning…: unpickling their
classes needs them importable) as ``python -m tests.support.genuine_reference < request.json``; the request is
``{"root": DIR, "items": [{"path": REL, "weights_only": bool, "names": [allow-listed global names]}]}`` and the
answer, on stdout, ``{REL: {"tensors": {dotted path: parts}, "error": null | "Type: message"}}``. ``parts`` is what
makes a tensor what it is (dtype, layout, shape, and a sha256 of every number array: dense bytes, quantized
int_repr + scales/zero points, sparse indices + values, nested values + offsets / components).

``weights_only=True`` items load through ``torch.load(weights_only=True)`` under
``torch.serialization.safe_globals`` holding exactly the named globals (resolved by import), with two facts of
torch 2.13's weights_only unpickler met mechanically: it reads protocol-2 opcodes only (a protocol >= 3 pickle is
given as an opcode-level protocol-2 copy, :func:`protocol2_copy`), and ``numpy.dtype`` + BUILD needs the
``numpy.dtypes.*DType`` class of the dtype (added, non-object classes only, when ``numpy.dtype`` is named).

Importable anywhere torch is (the test process uses :func:`torch_parts` for ckpt's side); imports nothing else.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import pickletools
import struct
import sys
import warnings
import zipfile
from pathlib import Path


# ------------------------------------------------------------------------------------------------------------
# fingerprints
# ------------------------------------------------------------------------------------------------------------
def digest(b: bytes) -> str:
    return f"{len(b)}:{hashlib.sha256(b).hexdigest()[:32]}"


def dense_bytes(t) -> bytes:
    import torch

    native = {torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
              torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.bool, torch.complex64, torch.complex128}
    t = t.detach()
    if t.dtype not in native:  # bfloat16, float8/4, complex32, bits*: the same bytes as an int of that width
        t = t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t.contiguous().numpy().tobytes()


def torch_parts(t) -> dict:
    """Everything that makes `t` what it is, JSON-able (number arrays as digests of their bytes)."""
    import torch

    d = {"dtype": str(t.dtype), "layout": str(t.layout)}
    if t.is_nested:
        if t.layout == torch.jagged:
            d.update(values=digest(dense_bytes(t.values())), offsets=digest(dense_bytes(t.offsets())))
        else:
            d["components"] = [[list(c.shape), digest(dense_bytes(c))] for c in t.unbind()]
        return d
    d["shape"] = list(t.shape)
    if t.device.type == "meta":
        d["device"] = "meta"
        return d
    if t.is_quantized:
        d["int_repr"] = digest(dense_bytes(t.int_repr()))  # quint4x2 / quint2x4: torch gives the packed bytes
        q = t.qscheme()
        d["qscheme"] = str(q)
        if q in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            d.update(scale=float(t.q_scale()), zero_point=int(t.q_zero_point()))
        else:
            d.update(scales=digest(dense_bytes(t.q_per_channel_scales())),
                     zero_points=digest(dense_bytes(t.q_per_channel_zero_points())), axis=t.q_per_channel_axis())
        return d
    if t.layout == torch.sparse_coo:
        d.update(indices=digest(dense_bytes(t._indices())), values=digest(dense_bytes(t._values())),
                 coalesced=t.is_coalesced())
    elif t.layout in (torch.sparse_csr, torch.sparse_bsr):
        d.update(crow=digest(dense_bytes(t.crow_indices())), col=digest(dense_bytes(t.col_indices())),
                 values=digest(dense_bytes(t.values())))
    elif t.layout in (torch.sparse_csc, torch.sparse_bsc):
        d.update(ccol=digest(dense_bytes(t.ccol_indices())), row=digest(dense_bytes(t.row_indices())),
                 values=digest(dense_bytes(t.values())))
    else:
        d["bytes"] = digest(dense_bytes(t))
    return d


def is_plain_dense(parts: dict) -> bool:
    return parts["layout"] == "torch.strided" and "bytes" in parts


def flatten(obj, is_leaf, prefix="", out=None, seen=None) -> dict:
    """{dotted path: leaf} over dicts, lists and tuples (shared containers visited once)."""
    out = {} if out is None else out
    seen = set() if seen is None else seen
    if is_leaf(obj):
        out[prefix] = obj
        return out
    if id(obj) in seen:
        return out
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            flatten(v, is_leaf, f"{prefix}.{k}" if prefix else str(k), out, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for i, v in enumerate(obj):
            flatten(v, is_leaf, f"{prefix}.{i}" if prefix else str(i), out, seen)
    return out


# ------------------------------------------------------------------------------------------------------------
# torch's weights_only unpickler reads protocol-2 opcodes only: an opcode-level protocol-2 copy of a pickle
# ------------------------------------------------------------------------------------------------------------
def p2_pickle(data: bytes, start: int = 0) -> tuple[bytes, int]:
    """(an equivalent protocol-2 pickle of data[start:], end offset). Mechanical, nothing is unpickled:
    FRAME dropped, SHORT_BINUNICODE/BINUNICODE8 -> BINUNICODE, MEMOIZE -> BINPUT, STACK_GLOBAL -> GLOBAL (its two
    string operands are removed; a memo slot they filled is re-emitted as the string when fetched later)."""
    f = io.BytesIO(data)
    f.seek(start)
    ops = list(pickletools.genops(f))
    end = f.tell()
    if not ops or ops[0][0].name != "PROTO" or ops[0][1] < 3:
        return data[start:end], end
    positions = [p for _, _, p in ops] + [end]
    out, slot_value, virtual, memo_n = [], {}, {}, 0

    def pop_push():
        puts = []
        while out[-1][0] == "PUT":
            puts.append(out.pop()[1])
        kind, val = out.pop()
        val = val if kind == "STR" else slot_value[val]
        for p in puts:
            virtual[p] = val
        return val

    for i, (op, arg, pos) in enumerate(ops):
        n = op.name
        if n == "FRAME":
            continue
        if n == "PROTO":
            out.append(("RAW", b"\x80\x02"))
        elif n in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
            out.append(("STR", arg))
        elif n in ("MEMOIZE", "BINPUT", "LONG_BINPUT"):
            idx = memo_n if n == "MEMOIZE" else arg
            memo_n = max(memo_n, idx + 1)
            prev = out[-1]
            if prev[0] == "STR":
                slot_value[idx] = prev[1]
            elif prev[0] == "GET" and prev[1] in slot_value:
                slot_value[idx] = slot_value[prev[1]]
            out.append(("PUT", idx))
        elif n in ("BINGET", "LONG_BINGET"):
            out.append(("GET", arg))
        elif n in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            out.append(("BYTES", bytes(arg)))
        elif n == "BYTEARRAY8":
            out.append(("BYTEARRAY", bytes(arg)))
        elif n == "STACK_GLOBAL":
            name = pop_push()
            module = pop_push()
            out.append(("GLOBAL", f"{module}\n{name}\n"))
        else:
            out.append(("RAW", data[pos:positions[i + 1]]))
    renum, chunks = {}, []

    def text(s):
        b = s.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(b)) + b

    for kind, val in out:
        if kind == "RAW":
            chunks.append(val)
        elif kind == "STR":
            chunks.append(text(val))
        elif kind == "GLOBAL":
            chunks.append(b"c" + val.encode())
        elif kind in ("BYTES", "BYTEARRAY"):  # protocol 2 spells bytes as _codecs.encode(latin-1 text, 'latin1')
            enc = b"c_codecs\nencode\n" + text(val.decode("latin-1")) + text("latin1") + b"\x86R"
            chunks.append(enc if kind == "BYTES" else b"cbuiltins\nbytearray\n" + enc + b"\x85R")
        elif kind == "PUT":
            if val in virtual:
                continue
            renum[val] = k = len(renum)
            chunks.append(b"q" + bytes([k]) if k < 256 else b"r" + struct.pack("<I", k))
        elif val in virtual:  # GET of a slot that held a STACK_GLOBAL operand
            chunks.append(text(virtual[val]))
        else:
            k = renum[val]
            chunks.append(b"h" + bytes([k]) if k < 256 else b"j" + struct.pack("<I", k))
    return b"".join(chunks), end


def protocol2_copy(path: Path):
    """`path` itself when its pickles are protocol <= 2, else an in-memory copy with protocol-2 pickles."""
    data = Path(path).read_bytes()
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            pkls = [n for n in z.namelist() if n.endswith(".pkl")]
            if all(z.read(n)[1:2] in (b"\x01", b"\x02") for n in pkls):
                return path
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zo:
                for info in z.infolist():
                    body = z.read(info)
                    zo.writestr(info.filename, p2_pickle(body)[0] if info.filename.endswith(".pkl") else body)
        buf.seek(0)
        return buf
    if data[:1] == b"\x80" and data[1:2] not in (b"\x01", b"\x02"):
        out, pos = [], 0
        for _ in range(5):  # legacy: magic, protocol, sys info, object, storage keys; raw storages follow
            chunk, pos = p2_pickle(data, pos)
            out.append(chunk)
        return io.BytesIO(b"".join(out) + data[pos:])
    return path


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------
def resolve_global(name: str):
    """The object `module.qualname` names (longest importable module prefix, then attributes)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(f"cannot import {name}")


def safe_globals_for(names) -> list:
    objs = []
    for n in sorted(set(names)):
        obj = resolve_global(n)
        # objects without a __qualname__ (torch.float32, a dtype instance), or found under another name than their
        # own (numpy._core.* in NumPy 1.26 is numpy.core.*), go as (object, name), as torch documents
        own = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        objs.append(obj if own == n else (obj, n))
    if "numpy.dtype" in names:
        import numpy as np

        objs += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"
                 and isinstance(getattr(np.dtypes, n), type)]
    return objs


def _dcp_pickles_weights_only(path: Path, safe) -> None:
    """Every pickle of a DCP folder through torch's weights_only unpickler (metadata + stored objects)."""
    import torch
    from torch import _weights_only_unpickler as wou
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    with torch.serialization.safe_globals(list(safe)):
        wou.Unpickler(io.BytesIO(p2_pickle((path / ".metadata").read_bytes())[0])).load()
        md = FileSystemReader(str(path)).read_metadata()
        for idx, info in md.storage_data.items():
            if isinstance(md.state_dict_metadata.get(idx.fqn), BytesStorageMetadata):
                with open(path / info.relative_path, "rb") as fh:
                    fh.seek(info.offset)
                    torch.load(io.BytesIO(fh.read(info.length)), weights_only=True)


def torch_read(path: Path, weights_only: bool, safe=()) -> dict:
    """torch's reading of a corpus entry as {dotted path: tensor}."""
    import torch

    def tensors(obj):
        return flatten(obj, lambda x: isinstance(x, torch.Tensor))

    if path.is_dir():  # DCP: its metadata/objects under weights_only, tensors through torch's converter
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        if weights_only:
            _dcp_pickles_weights_only(path, safe)
        buf = io.BytesIO()
        dcp_to_torch_save(path, buf)
        buf.seek(0)
        with torch.serialization.safe_globals(list(safe)):
            return tensors(torch.load(buf, weights_only=weights_only))
    if path.name.endswith(".safetensors"):
        from safetensors.torch import load_file

        return tensors(load_file(path))
    if path.name.endswith(".index.json"):
        out = {}
        for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
            out.update(torch_read(path.parent / shard, weights_only, safe))
        return out
    data = path.read_bytes()
    if data[:4] != b"PK\x03\x04" and path.suffix == ".pkl":  # a plain pickle (mmengine.fileio.dump …)
        import pickle

        from torch import _weights_only_unpickler as wou

        if not weights_only:
            return tensors(pickle.loads(data))
        with torch.serialization.safe_globals(list(safe)):
            return tensors(wou.Unpickler(io.BytesIO(p2_pickle(data)[0]), encoding="ASCII").load())
    src = protocol2_copy(path) if weights_only else path
    with torch.serialization.safe_globals(list(safe)):
        return tensors(torch.load(src, map_location="cpu", weights_only=weights_only))


def answer(request: dict) -> dict:
    root = Path(request["root"])
    out = {}
    for item in request["items"]:
        rel = item["path"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                safe = safe_globals_for(item.get("names", ())) if item["weights_only"] else ()
                ts = torch_read(root / rel, item["weights_only"], safe)
            out[rel] = {"tensors": {k: torch_parts(t) for k, t in ts.items()}, "error": None}
        except Exception as exc:  # noqa: BLE001 - the answer says what torch refused
            msg = str(exc).strip().splitlines()
            out[rel] = {"tensors": {}, "error": f"{type(exc).__name__}: {msg[-1][:400] if msg else ''}"}
    return out


def main():
    json.dump(answer(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
