"""On-disk cache of raw per-view scores, one file per (config, checkpoint sha256, split, k).

Raw per-view scores are what inference produces; aggregation (``prob``/``score``), fusion, tables and dumps are
computed from them, so re-running with any of those changed needs no model at all. A file covers samples
``0..n-1`` of the split; a run with ``--limit`` ≤ n reuses it.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

VERSION = 1


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a directory's files (sorted by relative path) for sharded/DCP checkpoints."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while True:
                block = fh.read(chunk)
                if not block:
                    break
                h.update(block)
    return h.hexdigest()


def cache_key(config_fingerprint: dict, checkpoint_sha256: str, split, k: int) -> str:
    payload = json.dumps({"v": VERSION, "config": config_fingerprint, "checkpoint": checkpoint_sha256,
                          "split": split, "k": int(k)}, sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


class ScoreCache:
    def __init__(self, directory):
        self.dir = Path(directory)

    def path(self, key: str, k: int) -> Path:
        return self.dir / f"clips{int(k)}-{key[:24]}.npz"

    def load(self, key: str, k: int, needed: int):
        """``(labels [n], {stream: [n, V, C]})`` for the first ``needed`` samples, or None on a miss."""
        p = self.path(key, k)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != key or meta.get("count", 0) < needed:
                    return None
                labels = z["labels"][:needed]
                views = {s: z[f"views_{i}"][:needed] for i, s in enumerate(meta["streams"])}
        except Exception:  # unreadable or foreign file: a miss, recomputed and overwritten
            return None
        return labels, views

    def save(self, key: str, k: int, labels, views: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(key, k)
        meta = {"key": key, "k": int(k), "count": int(len(labels)), "streams": list(views)}
        arrays = {f"views_{i}": np.asarray(v) for i, v in enumerate(views.values())}
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), labels=np.asarray(labels, dtype=np.int64), **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return p
