"""torch.distributed.checkpoint directories: `.metadata` (a pickle of dataclasses) plus `*.distcp` data files.

The metadata is read with the restricted unpickler: its dataclasses arrive as inert records whose state we read as
plain data. Each stored item is a small torch zip archive embedded at an offset of a data file; tensors inside it
are memory-mapped like any other zip checkpoint. Paths in the metadata cannot leave the directory.
"""
from __future__ import annotations

import os

from ckpttool.errors import FormatError
from ckpttool.io.tensor import MappedFile, TensorRef
from ckpttool.io.torchfile import read_zip
from ckpttool.io.unpickle import Inert, Judge, unpickle

_META = "torch.distributed.checkpoint.metadata."


def _state(obj, cls: str) -> dict:
    if not isinstance(obj, Inert) or obj.qualname.rsplit(".", 1)[-1] != cls:
        raise FormatError(f"DCP metadata: expected {cls}, found {type(obj).__name__}")
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # dataclasses with slots pickle (None, slotstate)
        state = {**(state[0] or {}), **(state[1] or {})}
    if not isinstance(state, dict):
        raise FormatError(f"DCP metadata: malformed {cls}")
    return state


def read_dcp(directory: str, judge: Judge | None = None):
    """Returns (flat dict fqn -> TensorRef or plain value, judge of every pickle read)."""
    meta_path = os.path.join(directory, ".metadata")
    try:
        with open(meta_path, "rb") as f:
            meta, judge = unpickle(f.read(), judge=judge)
    except OSError as exc:
        raise FormatError(f"cannot read DCP metadata ({exc})") from None
    md = _state(meta, "Metadata")
    entries, storage = md.get("state_dict_metadata"), md.get("storage_data")
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise FormatError("DCP metadata without state_dict_metadata/storage_data")
    located: dict[str, list] = {}
    for index, info in storage.items():
        idx, loc = _state(index, "MetadataIndex"), _state(info, "_StorageInfo")
        located.setdefault(idx.get("fqn"), []).append(loc)
    files: dict[str, MappedFile] = {}
    out = {}
    for fqn, entry in entries.items():
        locs = located.get(fqn)
        if not locs:
            raise FormatError(f"DCP item {fqn!r} has no stored data")
        if len(locs) > 1:
            raise FormatError(f"DCP item {fqn!r} is sharded in {len(locs)} chunks: not supported yet")
        loc = locs[0]
        mfile = files.get(loc.get("relative_path"))
        if mfile is None:
            mfile = files[loc.get("relative_path")] = MappedFile(_inside(directory, loc.get("relative_path")))
        offset, length = loc.get("offset"), loc.get("length")
        if not isinstance(offset, int) or not isinstance(length, int):
            raise FormatError(f"DCP item {fqn!r}: malformed location")
        value, _ = read_zip(mfile, offset, length, judge=judge)
        if entry.qualname.endswith("TensorStorageMetadata") and not isinstance(value, TensorRef):
            raise FormatError(f"DCP item {fqn!r} should be a tensor")
        out[fqn] = value
    return out, judge


def _inside(directory: str, rel) -> str:
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or "\x00" in rel:
        raise FormatError(f"DCP metadata names an invalid data file {rel!r}")
    root = os.path.realpath(directory)
    full = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([full, root]) != root:
        raise FormatError(f"DCP data file {rel!r} escapes the checkpoint directory")
    if not os.path.isfile(full):
        raise FormatError(f"DCP data file {rel!r} is missing")
    return full
