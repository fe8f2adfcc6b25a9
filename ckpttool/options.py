"""Parsers of option values shared by the library and the CLI (one of each; no heavy imports)."""
from __future__ import annotations

from ckpttool.errors import CkptError


def parse_clips(clips) -> list[int]:
    """``"1,3,5"`` / ``["1,3", "5"]`` / ``[1, 3, 5]`` / ``5`` -> sorted unique positive ints.

    Every comma-separated item must be a positive integer: ``""``, ``"1,,3"``, ``"0"``, ``"-1"`` and ``"a"`` are
    refused with one CkptError naming ``--clips``."""
    items = [clips] if isinstance(clips, (str, int)) else list(clips or [])
    parts = [p.strip() for item in items for p in str(item).split(",")]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        shown = ",".join(map(str, items)) if not isinstance(clips, (str, int)) else repr(clips)
        raise CkptError(f"--clips expects positive integers like 1,3,5,10, got {shown}")
    return sorted({int(p) for p in parts})
