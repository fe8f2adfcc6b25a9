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
        """``(targets [n], {stream: [n, V, …]})`` for the first ``needed`` samples, or None on a miss (ragged
        streams come back as object arrays of per-sample lists of views)."""
        p = self.path(view)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("key") != self.key(view) or meta.get("count", 0) < needed:
                    return None
                labels = z["labels"][:needed]
                ragged = set(meta.get("ragged", ()))
                views = {s: _unragged(z, i, needed) if s in ragged else z[f"views_{i}"][:needed]
                         for i, s in enumerate(meta["streams"])}
        except Exception:  # unreadable or foreign file: a miss, recomputed and overwritten
            return None
        return labels, views

    def hits(self, views, needed: int) -> dict:
        """``{view: (labels, outputs)}`` of the views the cache holds for ``needed`` samples."""
        found = {v: self.load(v, needed) for v in views}
        return {v: hit for v, hit in found.items() if hit is not None}

    def save(self, view, labels, outputs: dict) -> Path | None:
        """Write one view's outputs; None (nothing written) where they are not plain numbers."""
        from ckpttool.io.write import write_bytes

        arrays, ragged = {}, []
        for i, (stream, v) in enumerate(outputs.items()):
            if v.dtype == object:
                pieces = _ragged(v)
                if pieces is None:
                    return None
                arrays.update({f"views_{i}_{part}": a for part, a in pieces.items()})
                ragged.append(stream)
            else:
                arrays[f"views_{i}"] = np.asarray(v)
        labels = np.asarray(labels)
        if labels.dtype == object:
            return None
        meta = {"key": self.key(view), "k": view, "count": int(len(labels)), "streams": list(outputs),
                "ragged": ragged}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), labels=labels, **arrays)
        self.dir.mkdir(parents=True, exist_ok=True)
        return Path(write_bytes(self.path(view), buf.getbuffer(), force=True))

    def save_all(self, results: dict) -> None:
        """Save every view whose outputs are numbers (dense, or ragged per-sample lists of arrays)."""
        for view, (labels, outputs) in results.items():
            self.save(view, labels, outputs)


def _ragged(values):
    """An object array of per-sample views (lists of arrays, or ``[V, …]`` arrays of different V) as flat numeric
    pieces: ``counts`` (views per sample), ``shapes`` (one row per view), ``data`` (all views raveled); None when
    they are not arrays of one dtype and rank."""
    views = [np.asarray(x) for sample in values for x in sample]
    counts = np.array([len(sample) for sample in values], dtype=np.int64)
    if not views:
        return {"counts": counts, "shapes": np.zeros((0, 0), np.int64), "data": np.zeros(0)}
    dtype, ndim = views[0].dtype, views[0].ndim
    if dtype == object or any(x.dtype != dtype or x.ndim != ndim for x in views):
        return None
    return {"counts": counts, "shapes": np.array([x.shape for x in views], dtype=np.int64).reshape(len(views), ndim),
            "data": np.concatenate([x.reshape(-1) for x in views])}


def _unragged(z, i: int, needed: int):
    """The object array :func:`_ragged` flattened, for the first ``needed`` samples: per sample a list of views."""
    counts, shapes, data = z[f"views_{i}_counts"], z[f"views_{i}_shapes"], z[f"views_{i}_data"]
    sizes = np.prod(shapes, axis=1, dtype=np.int64) if len(shapes) else np.zeros(0, np.int64)
    ends = np.cumsum(sizes)
    out, v = np.empty(needed, dtype=object), 0
    for n in range(needed):
        views = []
        for _ in range(int(counts[n])):
            views.append(data[ends[v] - sizes[v]:ends[v]].reshape(shapes[v]))
            v += 1
        out[n] = views
    return out
