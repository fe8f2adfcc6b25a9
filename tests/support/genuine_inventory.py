"""Which globals each genuine corpus file's pickles name, and how each is used — read with ``pickletools.genops``,
never unpickled.

A use is what the unpickler would do with the global: ``call`` (REDUCE, INST, OBJ), ``instantiate`` (NEWOBJ,
NEWOBJ_EX), ``build`` (BUILD / __setstate__ on an object the global made), ``attribute`` (named by a ``getattr``
REDUCE), ``reference`` (the global itself is a value: an argument, a dict value, a persistent id's storage type).
Protocol < 3 ``GLOBAL`` names are resolved as the C unpickler resolves them (``_compat_pickle.NAME_MAPPING`` /
``IMPORT_MAPPING``); the name as spelled in the file is kept too. Pickles found: ``*.pkl`` entries of torch zip
files, the five pickles of a legacy torch file, plain pickle files, DCP ``.metadata`` and the ``torch.save`` buffers
stored inside ``.distcp`` files, and legacy files nested through ``torch.storage._load_from_bytes``.

``.venv-corpus/bin/python -m tests.support.genuine_inventory [--out DIR] [--markdown FILE] [--ckpt]`` prints / writes
the inventory (``--ckpt``: also what ``ckpt inspect`` says and what torch reads; torch.load of library classes needs
the corpus interpreter).
"""
from __future__ import annotations

import _compat_pickle
import io
import json
import pickletools
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_BYTES = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_MARK = object()


class _G:
    """A global pushed on the symbolic stack."""

    __slots__ = ("name", "used")

    def __init__(self, name):
        self.name, self.used = name, False


class _O:
    """An object a global made (call / instantiate)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def resolve(module: str, name: str, proto: int) -> str:
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def pickle_uses(data: bytes, start: int = 0, where: str = "", out=None):
    """Uses in the pickle at data[start:]; returns (uses, end offset). uses: list of (name, use, spelled, where)."""
    uses = [] if out is None else out
    stack, memo, proto = [], {}, 0
    end = start
    f = io.BytesIO(data)
    f.seek(start)

    def pop_mark():
        items = []
        while stack:
            x = stack.pop()
            if x is _MARK:
                break
            items.append(x)
        return items[::-1]

    def use(x, kind):
        if isinstance(x, _G):
            x.used = True
            uses.append((x.name[0], kind, x.name[1], where))
            return x.name[0]
        return None

    all_globals = []
    for op, arg, pos in pickletools.genops(f):
        n = op.name
        end = f.tell()
        if n == "PROTO":
            proto = arg
        elif n == "MARK":
            stack.append(_MARK)
        elif n in _STRINGS:
            stack.append(("s", arg))
        elif n in _BYTES:
            stack.append(("b", arg))
        elif n in ("GLOBAL", "INST"):
            module, name = arg.split(" ", 1)
            g = _G((resolve(module, name, proto), f"{module}.{name}"))
            all_globals.append(g)
            if n == "INST":
                pop_mark()
                stack.append(_O(use(g, "call")))
            else:
                stack.append(g)
        elif n == "STACK_GLOBAL":
            name, module = stack.pop(), stack.pop()
            mn = module[1] if isinstance(module, tuple) else "?"
            nn = name[1] if isinstance(name, tuple) else "?"
            g = _G((f"{mn}.{nn}", f"{mn}.{nn}"))
            all_globals.append(g)
            stack.append(g)
        elif n == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            made = use(fn, "call")
            if made in ("builtins.getattr",) and isinstance(args, tuple) and args[0] == "t" and len(args[1]) == 2:
                target, attr = args[1]
                if isinstance(target, (_G, _O)) and isinstance(attr, tuple) and attr[0] == "s":
                    base = target.name[0] if isinstance(target, _G) else target.name
                    uses.append((f"{base}.{attr[1]}", "attribute", f"{base}.{attr[1]}", where))
            if made == "collections.defaultdict" and isinstance(args, tuple) and args[0] == "t" and args[1]:
                f0 = args[1][0]
                uses.append((f0.name[0] if isinstance(f0, _G) else repr(f0), "defaultdict factory",
                             f0.name[1] if isinstance(f0, _G) else "", where))
            if made == "torch._tensor._rebuild_from_type_v2" and isinstance(args, tuple) and args[0] == "t" \
                    and args[1] and isinstance(args[1][0], _G):
                uses.append((args[1][0].name[0], "called by _rebuild_from_type_v2", args[1][0].name[1], where))
            if made == "torch.storage._load_from_bytes" and isinstance(args, tuple) and args[0] == "t":
                for a in args[1]:
                    if isinstance(a, tuple) and a[0] == "b":
                        legacy_uses(bytes(a[1]), f"{where} > _load_from_bytes", uses)
            if made == "_codecs.encode" and isinstance(args, tuple) and args[0] == "t" and args[1] \
                    and isinstance(args[1][0], tuple) and args[1][0][0] == "s":  # protocol 2's bytes
                stack.append(("b", args[1][0][1].encode("latin-1", "replace")))
                continue
            stack.append(_O(made) if made else None)
        elif n == "NEWOBJ":
            args, cls = stack.pop(), stack.pop()
            stack.append(_O(use(cls, "instantiate")))
        elif n == "NEWOBJ_EX":
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            stack.append(_O(use(cls, "instantiate")))
        elif n == "OBJ":
            items = pop_mark()
            stack.append(_O(use(items[0], "call")) if items else None)
        elif n == "BUILD":
            stack.pop()
            if stack and isinstance(stack[-1], _O) and stack[-1].name:
                uses.append((stack[-1].name, "build", stack[-1].name, where))
        elif n in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif n == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif n in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif n in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(n[-1])
            items = stack[-k:]
            del stack[-k:]
            stack.append(("t", items))
        elif n == "TUPLE":
            stack.append(("t", pop_mark()))
        elif n == "EMPTY_TUPLE":
            stack.append(("t", []))
        elif n == "STOP":
            break
        else:  # generic stack effect
            before = op.stack_before
            if pickletools.markobject in before:
                k = before.index(pickletools.markobject)
                pop_mark()
                for _ in range(k):
                    stack.pop()
            else:
                for _ in range(len(before)):
                    stack.pop()
            stack.extend([None] * len(op.stack_after))
    for g in all_globals:
        if not g.used:
            uses.append((g.name[0], "reference", g.name[1], where))
    return uses, end


def legacy_uses(data: bytes, where: str, out=None):
    """The five pickles at the head of a legacy torch file (magic, protocol, sys info, object, storage keys)."""
    out = [] if out is None else out
    pos = 0
    for i in range(5):
        try:
            _, pos = pickle_uses(data, pos, f"{where} pickle {i + 1}/5", out)
        except Exception as exc:  # noqa: BLE001  (a report, not a reader)
            out.append((f"<unparsed: {type(exc).__name__}>", "error", "", where))
            break
    return out


def file_uses(path: Path) -> list:
    """All uses in one corpus entry (a file, a DCP folder, or an index json whose shards are read)."""
    path = Path(path)
    if path.is_dir():  # DCP
        out = []
        meta = (path / ".metadata").read_bytes()
        pickle_uses(meta, 0, ".metadata", out)
        # the non-tensor items are torch.save buffers at (file, offset, length) named by the metadata; the
        # metadata is our own file here, so it is read with torch's reader to find them
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata

        md = FileSystemReader(str(path)).read_metadata()
        for idx, info in md.storage_data.items():
            if isinstance(md.state_dict_metadata.get(idx.fqn), BytesStorageMetadata):
                with open(path / info.relative_path, "rb") as fh:
                    fh.seek(info.offset)
                    buf = fh.read(info.length)
                out += zip_uses(io.BytesIO(buf), f"{info.relative_path}@{info.offset} ({idx.fqn})") \
                    if buf[:4] == b"PK\x03\x04" else pickle_uses(buf, 0, idx.fqn)[0]
        return out
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        out = []
        for shard in sorted(set(index["weight_map"].values())):
            if not shard.endswith(".safetensors"):
                out += file_uses(path.parent / shard)
        return out
    head = path.read_bytes()[:8]
    if head[:4] == b"PK\x03\x04":
        return zip_uses(path, path.name)
    if head[:1] == b"\x80":
        data = path.read_bytes()
        first, end = pickle_uses(data, 0, "pickle 1")
        if end < len(data) and data[end:end + 1] == b"\x80":  # legacy torch file: a sequence of pickles
            return legacy_uses(data, "legacy")
        return first
    return []  # safetensors: a JSON header, no pickle


def zip_uses(src, where: str) -> list:
    out = []
    with zipfile.ZipFile(src) as z:
        for name in z.namelist():
            if name.endswith(".pkl"):
                pickle_uses(z.read(name), 0, f"{where}:{name.split('/', 1)[-1]}", out)
    return out


def summarise(uses) -> dict:
    """name -> {'uses': {use: count}, 'spelled': set of names as written}."""
    res = defaultdict(lambda: {"uses": defaultdict(int), "spelled": set()})
    for name, kind, spelled, _ in uses:
        res[name]["uses"][kind] += 1
        if spelled != name:
            res[name]["spelled"].add(spelled)
    return res


def inventory(entries, root: Path) -> dict:
    """family -> name -> {'uses': {use: n}, 'files': n, 'spelled': set}."""
    fams = defaultdict(lambda: defaultdict(lambda: {"uses": defaultdict(int), "files": 0, "spelled": set()}))
    for e in entries:
        s = summarise(file_uses(root / e["path"]))
        for name, d in s.items():
            rec = fams[e["family"]][name]
            rec["files"] += 1
            rec["spelled"] |= d["spelled"]
            for k, v in d["uses"].items():
                rec["uses"][k] += v
    return fams


def markdown(fams, entries) -> str:
    lines = []
    count = defaultdict(int)
    for e in entries:
        count[e["family"]] += 1
    for fam, names in fams.items():
        lines.append(f"### {fam} ({count[fam]} files)\n")
        lines.append("| global | uses (count over the family's pickles) | files | spelled in file |")
        lines.append("|---|---|---|---|")
        for name in sorted(names):
            d = names[name]
            u = ", ".join(f"{k} {v}" for k, v in sorted(d["uses"].items()))
            lines.append(f"| `{name}` | {u} | {d['files']} | {', '.join(sorted(d['spelled'])) or ''} |")
        lines.append("")
    return "\n".join(lines)


def _torch_tensors(obj, out, seen=None):
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((str(obj.dtype).removeprefix("torch."), tuple(obj.shape), str(obj.layout).removeprefix("torch.")))
    elif isinstance(obj, dict):
        for v in obj.values():
            _torch_tensors(v, out, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _torch_tensors(v, out, seen)
    return out


def _walk_refs(obj, out, cls, seen):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, cls):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk_refs(v, out, cls, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk_refs(v, out, cls, seen)


def ckpt_report(entries, root: Path) -> list:
    """What the current `ckpt inspect --format json` says about each entry, next to what torch reads."""
    import contextlib
    import warnings

    import torch
    from click.testing import CliRunner

    from ckpttool.cli.main import cli

    rows = []
    runner = CliRunner()
    for e in entries:
        path = root / e["path"]
        res = runner.invoke(cli, ["inspect", "--format", "json", str(path)])
        row = dict(path=e["path"], family=e["family"], exit=res.exit_code, verdict="", ckpt_tensors=None,
                   torch_tensors=None, message="", dtypes_ckpt=None)
        try:
            err = res.stderr
        except ValueError:
            err = ""
        row["message"] = " ".join(l.strip() for l in (err or "").splitlines() if l.strip())[:300]
        if res.exit_code == 0:
            try:
                d = json.loads(res.stdout)
            except ValueError:
                d = {}
            safety = d.get("safety")
            if isinstance(safety, dict):
                row["verdict"] = safety.get("verdict", "")
                bad = [g.get("name") for g in safety.get("globals", []) if g.get("verdict") != "data"]
                row["flagged"] = bad
            else:
                row["verdict"] = "DANGER" if d.get("suspicious_globals") else "ok"
                row["flagged"] = d.get("suspicious_globals") or []
                row["foreign"] = d.get("foreign_globals") or []
            row["ckpt_tensors"] = d.get("num_tensors")
            row["dtypes_ckpt"] = sorted({m for mod in d.get("modules", []) for m in mod.get("dtypes", [])})
        elif res.exception is not None and not isinstance(res.exception, SystemExit):
            row["message"] = f"{type(res.exception).__name__}: {res.exception}"[:300]
        try:
            from ckpttool.io import load
            from ckpttool.io.tensor import TensorRef

            try:
                from ckpttool.io.tensor import SpecialTensor
                kinds = (TensorRef, SpecialTensor)
            except ImportError:  # readers before issue 11
                kinds = (TensorRef,)
            refs = []
            _walk_refs(load(str(path)).root, refs, kinds, set())
            row["ckpt_all_tensors"] = len(refs)
            row["ckpt_all_dtypes"] = sorted({t.dtype for t in refs})
        except Exception as exc:  # noqa: BLE001
            row["ckpt_all_tensors"] = f"{type(exc).__name__}"
        if path.is_file() and not path.name.endswith((".safetensors", ".json")):
            try:
                with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    if path.suffix == ".pkl" and path.read_bytes()[:4] != b"PK\x03\x04":  # a plain pickle
                        import pickle

                        obj = pickle.loads(path.read_bytes())
                    else:
                        obj = torch.load(path, map_location="cpu", weights_only=False)
                ts = _torch_tensors(obj, [])
                row["torch_tensors"] = len(ts)
                row["torch_dtypes"] = sorted({t[0] for t in ts})
                row["torch_layouts"] = sorted({t[2] for t in ts})
            except Exception as exc:  # noqa: BLE001
                row["torch_error"] = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(row)
    return rows


def report_markdown(rows) -> str:
    lines = ["| file | exit | verdict | flagged globals | ckpt weights / all tensors | torch tensors | "
             "dtypes: ckpt vs torch (when they differ) | stderr |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dt = ""
        if r.get("torch_dtypes") is not None and r.get("dtypes_ckpt") is not None:
            mine = set(r.get("ckpt_all_dtypes") or r["dtypes_ckpt"])
            if mine != set(r["torch_dtypes"]):
                dt = f"ckpt {','.join(sorted(mine))} / torch {','.join(r['torch_dtypes'])}"
        lines.append(f"| {r['path']} | {r['exit']} | {r['verdict']} | {', '.join(r.get('flagged') or [])} | "
                     f"{r['ckpt_tensors']} / {r.get('ckpt_all_tensors')} | {r['torch_tensors'] if r['torch_tensors'] is not None else r.get('torch_error', '-')} | "
                     f"{dt} | {r['message'][:160].replace('|', '/')} |")
    return "\n".join(lines)


def main(argv=None):
    import argparse

    from tests.support import genuine_corpus

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(genuine_corpus.DEFAULT_OUT))
    ap.add_argument("--markdown", default="")
    ap.add_argument("--ckpt", action="store_true", help="also run `ckpt inspect` on every file")
    a = ap.parse_args(argv)
    root = Path(a.out)
    entries = genuine_corpus.load_manifest(root)
    text = markdown(inventory(entries, root), entries)
    if a.ckpt:
        text += "\n\n## What `ckpt inspect` says\n\n" + report_markdown(ckpt_report(entries, root)) + "\n"
    if a.markdown:
        Path(a.markdown).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    sys.exit(main())
