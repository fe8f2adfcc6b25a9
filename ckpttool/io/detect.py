"""Format detection from content, never from the file extension."""
from __future__ import annotations

import os
import struct

from ckpttool.errors import CkptError, FormatError

_PROTO0_STARTS = {b"c", b"(", b"}", b"]", b")", b"N", b"I", b"L", b"F", b"S", b"V", b"X", b"K", b"M", b"J", b"d", b"l",
                  b"t", b"U", b"T", b"G", b"\x88", b"\x89"}
_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def detect(path: str) -> str:
    """'torch-zip' | 'torch-legacy' | 'pickle' | 'safetensors' | 'safetensors-sharded' | 'torch-sharded' | 'dcp'."""
    if not os.path.exists(path):
        raise CkptError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, ".metadata")):
            return "dcp"
        if any(n.endswith(".index.json") for n in os.listdir(path)):
            return _sharded_kind(index_file(path))
        raise CkptError(f"{path}: is a directory, not a DCP checkpoint or a sharded checkpoint folder")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise CkptError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise FormatError(f"{path}: empty file")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "torch-zip"
    if head.startswith(_LEGACY_HEAD):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":  # before pickles: a header length may begin with 0x80 0x02
        (n,) = struct.unpack("<Q", head[:8])
        if n + 8 <= os.path.getsize(path):
            return "safetensors"
    if len(head) >= 2 and head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "torch-legacy" if _legacy_magic_first(path) else "pickle"
    if head.lstrip()[:1] == b"{" and b"weight_map" in _read_some(path):
        return _sharded_kind(path)
    if head[:1] in _PROTO0_STARTS:  # protocol 0/1 pickles have no PROTO opcode
        return "pickle"
    raise FormatError(f"{path}: not a checkpoint format ckpt knows (first bytes {head[:8]!r})")


def _legacy_magic_first(path: str) -> bool:
    """A legacy torch file saved with another pickle protocol (e.g. pickle_protocol=4): its first pickle is the
    magic number."""
    from ckpttool.io.torchfile import LEGACY_MAGIC
    from ckpttool.io.unpickle import unpickle_plain

    with open(path, "rb") as f:
        head = f.read(64)
    try:
        return unpickle_plain(head) == LEGACY_MAGIC
    except CkptError:
        return False


def _sharded_kind(index_path: str) -> str:
    """An index whose weight_map names torch files (transformers' pytorch_model.bin.index.json) or safetensors."""
    import json

    try:
        with open(index_path, "rb") as f:
            shards = set(json.loads(f.read(1 << 24)).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError, TypeError):
        return "safetensors-sharded"
    if shards and all(isinstance(s, str) and not s.endswith(".safetensors") for s in shards):
        return "torch-sharded"
    return "safetensors-sharded"


def _read_some(path: str, n: int = 1 << 20) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def index_file(path: str) -> str:
    """The index json of a sharded safetensors checkpoint given as a folder or as the index file."""
    if os.path.isdir(path):
        found = sorted(n for n in os.listdir(path) if n.endswith(".index.json"))
        if len(found) != 1:
            raise CkptError(f"{path}: expected one *.index.json, found {len(found)}")
        return os.path.join(path, found[0])
    return path
