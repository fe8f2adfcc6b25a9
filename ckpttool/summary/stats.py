"""Value statistics streamed over memory-mapped tensors, in cache-sized chunks.

Each chunk is read from the file once and reduced several times while it sits in cache, so the cost stays close to
one pass over the bytes. Float sums use BLAS dot products (ones·x and x·x run ~2.5x faster than numpy's pairwise
sum); within a chunk (128K elements) they accumulate in the chunk's float type, across chunks in float64.
NaN/Inf are counted only when the cheap sums say they exist.
"""
from __future__ import annotations

import math

from ckpttool.io.dtypes import widen_bfloat16

CHUNK = 1 << 17  # elements per chunk (512 KiB of float32: stays in L2 while reduced four times)
_ONES = {}


class Moments:
    """Running min/max/sum/sum-of-squares/NaN/Inf over float values (finite values only for the moments)."""

    __slots__ = ("n", "finite", "sum", "sumsq", "min", "max", "nan", "inf")

    def __init__(self):
        self.n = self.finite = self.nan = self.inf = 0
        self.sum = self.sumsq = 0.0
        self.min, self.max = math.inf, -math.inf

    def add(self, x) -> None:
        import numpy as np

        if x.size == 0:
            return
        self.n += x.size
        if x.dtype.kind == "f":
            s, ss = float(np.dot(_ones(x.dtype)[: x.size], x)), float(np.dot(x, x))
            if not (math.isfinite(s) and math.isfinite(ss)):
                bad = ~np.isfinite(x)
                nan = int(np.isnan(x).sum())
                self.nan += nan
                self.inf += int(bad.sum()) - nan
                x = x[~bad]
                if x.size == 0:
                    return
                s, ss = float(x.sum(dtype=np.float64)), float(np.dot(x.astype(np.float64), x.astype(np.float64)))
        else:
            s = float(np.add.reduce(x, dtype=np.float64))
            ss = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
        self.finite += x.size
        self.sum += s
        self.sumsq += ss
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def merge(self, other: "Moments") -> None:
        self.n += other.n
        self.finite += other.finite
        self.nan += other.nan
        self.inf += other.inf
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def result(self) -> dict:
        f = self.finite
        mean = self.sum / f if f else None
        var = max(self.sumsq / f - mean * mean, 0.0) if f else None
        return {"min": self.min if f else None, "max": self.max if f else None, "mean": mean,
                "std": math.sqrt(var) if var is not None else None, "l2": math.sqrt(self.sumsq),
                "nan": self.nan, "inf": self.inf}


def _ones(dtype):
    import numpy as np

    if dtype not in _ONES:
        _ONES[dtype] = np.ones(CHUNK, dtype=dtype)
    return _ONES[dtype]


def chunks(t):
    """A tensor's values as float32/float64/int ndarray chunks (bf16/fp16 widened to float32 chunk by chunk)."""
    import numpy as np

    raw = t.raw().reshape(-1) if t.is_contiguous() else np.ascontiguousarray(t.raw()).reshape(-1)
    for start in range(0, raw.size, CHUNK):
        part = raw[start: start + CHUNK]
        if t.dtype == "bfloat16":
            part = widen_bfloat16(part)
        elif t.dtype == "float16":
            part = part.astype(np.float32)
        elif t.dtype == "bool":
            part = part.view(np.uint8)
        yield part


def tensor_moments(t) -> Moments:
    m = Moments()
    if t.dtype.startswith(("complex", "float8")):
        return m
    for part in chunks(t):
        m.add(part)
    return m
