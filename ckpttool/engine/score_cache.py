"""On-disk cache of raw per-view outputs, one file per (config, checkpoint sha256, split, view key).

Raw per-view outputs are what inference produces; aggregation (``prob``/``score``), fusion, tables and dumps are
computed from them, so re-running with any of those changed needs no model at all. A file covers samples
``0..n-1`` of the split; a run with ``--limit`` ≤ n reuses it. Files are written through ``ckpttool.io.write``.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

VERSION = 1


def cache_key(config_fingerprint: dict, checkpoint_sha256: str, split, view) -> str:
    payload = json.dumps({"v": VERSION, "config": config_fingerprint, "checkpoint": checkpoint_sha256,
                          "split": split, "k": view}, sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


class ScoreCache:
    """The cache folder of one run: ``prefix`` names the view keys (``clips3-<key>.npz``)."""

    def __init__(self, directory, prefix: str, fingerprint: dict, checkpoint_sha256: str, split):
        self.dir, self.prefix = Path(directory), prefix
        self.identity = (fingerprint, checkpoint_sha256, split)

    def key(self, view) -> str:
        return cache_key(*self.identity, view)

    def path(self, view) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", str(view))
        return self.dir / f"{self.prefix}{slug}-{self.key(view)[:24]}.npz"

    def load(self, view, needed: int):
        """``(labels [n], {stream: [n, V, C]})`` for the first ``needed`` samples, or None on a miss."""
        p = self.path(view)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != self.key(view) or meta.get("count", 0) < needed:
                    return None
                labels = z["labels"][:needed]
                views = {s: z[f"views_{i}"][:needed] for i, s in enumerate(meta["streams"])}
        except Exception:  # unreadable or foreign file: a miss, recomputed and overwritten
            return None
        return labels, views

    def hits(self, views, needed: int) -> dict:
        """``{view: (labels, outputs)}`` of the views the cache holds for ``needed`` samples."""
        found = {v: self.load(v, needed) for v in views}
        return {v: hit for v, hit in found.items() if hit is not None}

    def save(self, view, labels, outputs: dict) -> Path:
        from ckpttool.io.write import write_bytes

        meta = {"key": self.key(view), "k": view, "count": int(len(labels)), "streams": list(outputs)}
        arrays = {f"views_{i}": np.asarray(v) for i, v in enumerate(outputs.values())}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), labels=np.asarray(labels, dtype=np.int64), **arrays)
        self.dir.mkdir(parents=True, exist_ok=True)
        return Path(write_bytes(self.path(view), buf.getbuffer(), force=True))

    def save_all(self, results: dict) -> None:
        """Save every view whose outputs are plain arrays (ragged ones stay uncached)."""
        for view, (labels, outputs) in results.items():
            if all(v.dtype != object for v in outputs.values()):
                self.save(view, labels, outputs)
