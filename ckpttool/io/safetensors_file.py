"""safetensors, single file and sharded (`*.index.json`). Format: 8-byte little-endian header length N, N bytes of
JSON `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`, then the data."""
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
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object")
    return header, 8 + n


def read_safetensors(path: str, mfile: MappedFile):
    """Returns (state dict of TensorRef, metadata dict)."""
    header, base = read_header(path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise FormatError("safetensors __metadata__ is not an object")
    out = {}
    for name, rec in header.items():
        try:
            dtype = BY_ST[rec["dtype"]]
            shape = [int(s) for s in rec["shape"]]
            begin, end = (int(v) for v in rec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"malformed safetensors entry {name!r}") from None
        if any(s < 0 for s in shape) or begin < 0 or end < begin:
            raise FormatError(f"malformed safetensors entry {name!r}")
        if (end - begin) != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"safetensors entry {name!r}: {end - begin} bytes for shape {shape} {dtype.name}")
        if base + end > mfile.size:
            raise FormatError(f"safetensors entry {name!r} lies past the end of the file")
        st = Storage(name, dtype, math.prod(shape), mfile, base + begin)
        out[name] = TensorRef(st, 0, shape)
    return out, meta


def read_index(path: str):
    """A sharded checkpoint's index: returns (state dict across shards, metadata, shard files)."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FormatError(f"not a safetensors index ({exc})") from None
    if not isinstance(weight_map, dict):
        raise FormatError("safetensors index: weight_map is not an object")
    root = os.path.dirname(os.path.abspath(path))
    shards, out = {}, {}
    for name, shard in weight_map.items():
        if shard not in shards:
            shards[shard] = _shard_path(root, shard)
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
    if not isinstance(shard, str) or not shard or os.path.isabs(shard) or "\x00" in shard:
        raise FormatError(f"safetensors index names an invalid shard {shard!r}")
    full = os.path.realpath(os.path.join(root, shard))
    if os.path.commonpath([full, os.path.realpath(root)]) != os.path.realpath(root):
        raise FormatError(f"safetensors index shard {shard!r} escapes its directory")
    if not os.path.isfile(full):
        raise FormatError(f"shard {shard!r} listed in the index is missing")
    return full
