"""Aggregate a flat state dict into module rows at a depth (`backbone.rgb_path`, `cls_head`, …)."""
from __future__ import annotations

import re
from collections import OrderedDict

DEFAULT_DEPTH, MAX_DEFAULT_ROWS = 2, 48
# buffers a state dict holds next to parameters (BatchNorm statistics, fixed tables): reported apart from them
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked", "position_ids", "relative_position_index",
                "attn_mask", "anchors", "base_anchors", "steps")


def module_of(key: str, depth: int) -> str:
    """The module a key belongs to at `depth` (the tensor's own name is never a module)."""
    parts = key.split(".")
    return ".".join(parts[: min(depth, max(len(parts) - 1, 1))])


def default_depth(keys) -> int:
    """Depth 2 shows a model's parts (backbone.rgb_path, encoders.camera, task_gca.object); fall back to 1 if
    that gives too many rows."""
    rows = {module_of(k, DEFAULT_DEPTH) for k in keys}
    return DEFAULT_DEPTH if len(rows) <= MAX_DEFAULT_ROWS else 1


def filter_keys(sd, pattern: str | None):
    if not pattern:
        return sd
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        from ckpttool.errors import CkptError
        raise CkptError(f"bad --filter regex {pattern!r}: {exc}") from None
    return OrderedDict((k, v) for k, v in sd.items() if rx.search(k))


def module_rows(sd, depth: int) -> list[dict]:
    """One row per module: tensors, params (elements), bytes, dtypes (sorted)."""
    rows: OrderedDict[str, dict] = OrderedDict()
    for key, t in sd.items():
        name = module_of(key, depth)
        row = rows.get(name)
        if row is None:
            row = rows[name] = {"name": name, "tensors": 0, "params": 0, "bytes": 0, "dtypes": set()}
        row["tensors"] += 1
        row["params"] += t.numel
        row["bytes"] += t.nbytes
        row["dtypes"].add(t.dtype)
    for row in rows.values():
        row["dtypes"] = sorted(row["dtypes"])
    return list(rows.values())
