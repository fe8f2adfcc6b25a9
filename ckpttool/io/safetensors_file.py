"""safetensors, single file and sharded (`*.index.json`). Format: 8-byte little-endian header length N, N bytes of
JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`, then the data.

Validated as the safetensors library validates (`Metadata::validate`): the header is a JSON object starting with
`{` (trailing spaces allowed), no key twice, every tensor's bytes match its dtype and shape, and the tensors, sorted by
offset, tile the data buffer exactly — no gaps, no overlaps, nothing left over."""
from __future__ import annotations

import json
import math
import os
import struct

from ckpttool.errors import FormatError
from ckpttool.io.dtypes import BY_ST
from ckpttool.io.tensor import MappedFile, Storage, TensorRef

MAX_HEADER = 100 << 20


def read_header(path: str) -> tuple[dict, int]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError("truncated safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise FormatError(f"safetensors header length {n} does not fit the file ({size} bytes)")
        raw = f.read(n)
    if not raw.startswith(b"{"):
        raise FormatError("safetensors header does not start with '{'")
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"safetensors header is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object")
    return header, 8 + n


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"safetensors header names {k!r} twice")
        out[k] = v
    return out


def read_safetensors(path: str, mfile: MappedFile):
    """Returns (state dict of TensorRef, metadata dict)."""
    header, base = read_header(path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FormatError("safetensors __metadata__ must map strings to strings")
    entries = []
    for name, rec in header.items():
        try:
            dtype = BY_ST[rec["dtype"]]
            shape = [s for s in rec["shape"] if type(s) is int]
            begin, end = rec["data_offsets"]
            if len(shape) != len(rec["shape"]) or type(begin) is not int or type(end) is not int:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"malformed safetensors entry {name!r}") from None
        if any(s < 0 for s in shape) or begin < 0 or end < begin:
            raise FormatError(f"malformed safetensors entry {name!r}")
        if (end - begin) != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"safetensors entry {name!r}: {end - begin} bytes for shape {shape} {dtype.name}")
        entries.append((begin, end, name, dtype, shape))
    entries.sort(key=lambda e: (e[0], e[1]))
    pos = 0
    for begin, end, name, _, _ in entries:
        if begin != pos:
            raise FormatError(f"safetensors entry {name!r}: data_offsets {'overlap' if begin < pos else 'leave a gap'}"
                              " (the data buffer must be tiled exactly)")
        pos = end
    if base + pos != mfile.size:
        raise FormatError(f"safetensors data buffer holds {mfile.size - base} bytes, its tensors {pos}")
    refs = {name: TensorRef(Storage(name, dtype, math.prod(shape), mfile, base + begin), 0, shape)
            for begin, _, name, dtype, shape in entries}
    return {name: refs[name] for name in header}, meta


def read_weight_map(path: str):
    """A sharded checkpoint's index json (safetensors or transformers' pytorch_model.bin.index.json): returns
    (weight_map {tensor: shard}, {shard: checked path inside the index's folder}, the index dict)."""
    try:
        if os.path.getsize(path) > MAX_HEADER:
            raise FormatError("index file is implausibly large")
        with open(path, encoding="utf-8") as f:
            index = json.load(f, object_pairs_hook=_no_duplicates)
        weight_map = index["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, RecursionError) as exc:
        raise FormatError(f"not a sharded checkpoint index ({str(exc)[:120]})") from None
    if not isinstance(weight_map, dict):
        raise FormatError("sharded checkpoint index: weight_map is not an object")
    root = os.path.dirname(os.path.abspath(path))
    shards = {}
    for name, shard in weight_map.items():
        if shard not in shards:
            shards[shard] = _shard_path(root, shard)
    return weight_map, shards, index


def read_index(path: str):
    """A sharded safetensors checkpoint's index: returns (state dict across shards, metadata, shard files)."""
    weight_map, shards, index = read_weight_map(path)
    out = {}
    per_shard = {}
    for shard, spath in shards.items():
        per_shard[shard], _ = read_safetensors(spath, MappedFile(spath))
    for name, shard in weight_map.items():
        if name not in per_shard[shard]:
            raise FormatError(f"index maps {name!r} to {shard}, which does not hold it")
        out[name] = per_shard[shard][name]
    meta = index.get("metadata") or {}
    return out, meta if isinstance(meta, dict) else {}, list(shards.values())


def _shard_path(root: str, shard) -> str:
    """A shard named by the index: a plain relative name inside the index's folder (no absolute path, no `..`).
    The name is what is checked, not where a symlink leads (a hub cache links shards into ../../blobs/)."""
    if not isinstance(shard, str) or not shard or os.path.isabs(shard) or "\x00" in shard \
            or ".." in shard.replace("\\", "/").split("/"):
        raise FormatError(f"sharded checkpoint index shard {str(shard)[:80]!r} escapes its directory (it must be a "
                          "relative name inside the index's folder)")
    full = os.path.join(root, shard)
    if not os.path.isfile(full):
        raise FormatError(f"shard {shard!r} listed in the index is missing")
    return full
