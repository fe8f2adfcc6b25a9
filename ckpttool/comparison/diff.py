"""`diff(a, b)`: keys, shapes, dtypes, values, meta and (optionally) training configs of two checkpoints.

Values are streamed pair by pair in cache-sized chunks straight off the memory maps: per chunk one subtraction and
four dot products (a·a, b·b, a·b, d·d) plus max|d|, accumulated in float64. Chunks are float32 unless a tensor is
float64 or a wide integer; a chunk whose sums are not finite (NaN/Inf, overflow) is redone in float64 over the
positions finite in both, and its NaN/Inf are counted. Pages already read are handed back to the OS, so memory
stays near one tensor pair however large the files are.
"""
from __future__ import annotations

import math
import re

from ckpttool.errors import CkptError
from ckpttool.io import load
from ckpttool.io.dtypes import widen_bfloat16
from ckpttool.summary.tree import default_depth, module_of

CHUNK = 1 << 16                  # elements per chunk (256 KiB of float32: a, b and b-a stay in L2)
RELEASE_BYTES = 64 << 20         # hand read pages back to the OS every this many bytes of a tensor
WIDE = {"float64", "int64", "int32", "uint32", "uint64"}   # computed in float64
NO_VALUES = ("complex", "float8")  # compared bit for bit only
META_KEYS = ("epoch", "iter", "global_step", "seed", "experiment_name", "time", "mmengine_version",
             "mmcv_version", "pytorch-lightning_version", "arch", "version")
FAIL_KINDS = ("keys", "shapes", "dtypes", "values", "nonfinite", "config")


class PairStats:
    """Sums over one tensor pair (or a module's pairs): enough for relative L2, max |b-a| and cosine."""

    __slots__ = ("aa", "bb", "ab", "dd", "max_abs", "equal", "nan_b", "inf_b", "nonfinite_a", "tensors", "changed",
                 "valued")

    def __init__(self):
        self.aa = self.bb = self.ab = self.dd = self.max_abs = 0.0
        self.nan_b = self.inf_b = self.nonfinite_a = self.tensors = self.changed = 0
        self.equal = self.valued = True

    def merge(self, o: "PairStats") -> None:
        self.aa, self.bb, self.ab, self.dd = self.aa + o.aa, self.bb + o.bb, self.ab + o.ab, self.dd + o.dd
        self.max_abs = max(self.max_abs, o.max_abs)
        self.nan_b, self.inf_b, self.nonfinite_a = self.nan_b + o.nan_b, self.inf_b + o.inf_b, \
            self.nonfinite_a + o.nonfinite_a
        self.tensors += 1
        self.changed += not o.equal
        self.valued = self.valued and o.valued

    def result(self) -> dict:
        if not self.valued:
            return {"rel_l2": None, "max_abs": None, "cosine": None, "nan_b": self.nan_b, "inf_b": self.inf_b}
        rel = math.sqrt(self.dd / self.aa) if self.aa > 0 else (0.0 if self.dd == 0 else math.inf)
        cos = max(-1.0, min(1.0, self.ab / math.sqrt(self.aa * self.bb))) if self.aa > 0 and self.bb > 0 else None
        return {"rel_l2": rel, "max_abs": self.max_abs, "cosine": cos, "nan_b": self.nan_b, "inf_b": self.inf_b}


def compare_pair(ta, tb, atol: float = 0.0, rtol: float = 0.0) -> PairStats:
    """Stream one same-shaped pair of TensorRefs (dtypes may differ: both are widened)."""
    import numpy as np

    st = PairStats()
    if ta.dtype.startswith(NO_VALUES) or tb.dtype.startswith(NO_VALUES):
        st.valued = False
        st.equal = ta.dtype == tb.dtype and bool(np.array_equal(ta.raw(), tb.raw()))
        return st
    compute = np.float64 if {ta.dtype, tb.dtype} & WIDE else np.float32
    ra, rb = _flat(ta), _flat(tb)
    buf = np.empty(min(CHUNK, ra.size), dtype=compute)
    released = 0
    with np.errstate(all="ignore"):   # NaN/Inf and overflow are counted, not warned about
        for start in range(0, ra.size, CHUNK):
            x = _widen(ra[start: start + CHUNK], ta.dtype, compute)
            y = _widen(rb[start: start + CHUNK], tb.dtype, compute)
            _chunk(x, y, buf[: x.size], st, atol, rtol)
            done = start + x.size
            if (done - released) * ta.itemsize >= RELEASE_BYTES:
                ta.release(released, done)
                tb.release(released, done)
                released = done
    ta.release()
    tb.release()
    return st


def _flat(t):
    import numpy as np

    raw = t.raw()
    return raw.reshape(-1) if t.is_contiguous() else np.ascontiguousarray(raw).reshape(-1)


def _widen(part, dtype: str, compute):
    import numpy as np

    if dtype == "bfloat16":
        return widen_bfloat16(part).astype(compute, copy=False)
    if dtype == "bool":
        part = part.view(np.uint8)
    return part.astype(compute, copy=False)


def _chunk(x, y, d, st: PairStats, atol: float, rtol: float) -> None:
    import numpy as np

    np.subtract(y, x, out=d)
    aa, bb, dd = float(np.dot(x, x)), float(np.dot(y, y)), float(np.dot(d, d))
    if not math.isfinite(aa + bb + dd):
        return _nonfinite_chunk(x, y, st, atol, rtol)
    mx = max(float(d.max()), -float(d.min()))
    if x.dtype == np.float32 and ((aa == 0 and x.any()) or (bb == 0 and y.any()) or (dd == 0 and mx > 0)):
        return _nonfinite_chunk(x, y, st, atol, rtol)   # squares underflowed float32: redo in float64
    st.aa, st.bb, st.dd = st.aa + aa, st.bb + bb, st.dd + dd
    st.ab += float(np.dot(x, y))
    st.max_abs = max(st.max_abs, mx)
    if st.equal and mx > atol:
        st.equal = rtol > 0 and bool(np.all(np.abs(d) <= atol + rtol * np.abs(x)))


def _nonfinite_chunk(x, y, st: PairStats, atol: float, rtol: float) -> None:
    """The slow path: count NaN/Inf, compare non-finite positions exactly, sum the rest in float64 (also used
    when float32 squares overflow or underflow)."""
    import numpy as np

    fa, fb = np.isfinite(x), np.isfinite(y)
    nan_b = int(np.isnan(y).sum())
    st.nan_b += nan_b
    st.inf_b += int(y.size - fb.sum()) - nan_b
    st.nonfinite_a += int(x.size - fa.sum())
    both = fa & fb
    xs, ys = x[~both], y[~both]
    if st.equal and not bool(np.all((xs == ys) | (np.isnan(xs) & np.isnan(ys)))):
        st.equal = False
    x, y = x[both].astype(np.float64), y[both].astype(np.float64)
    if x.size:
        d = y - x
        st.aa, st.bb = st.aa + float(np.dot(x, x)), st.bb + float(np.dot(y, y))
        st.ab, st.dd = st.ab + float(np.dot(x, y)), st.dd + float(np.dot(d, d))
        ad = np.abs(d)
        st.max_abs = max(st.max_abs, float(ad.max()))
        if st.equal and not bool(np.all(ad <= atol + rtol * np.abs(x))):
            st.equal = False


# --- the whole diff -------------------------------------------------------------------------------------------
def diff(path_a: str, path_b: str, depth: int | None = None, section_a: str | None = None,
         section_b: str | None = None, maps=(), atol: float = 0.0, rtol: float = 0.0, config: bool = False,
         config_a: str | None = None, config_b: str | None = None) -> dict:
    """Compare two checkpoints; returns the `ckpt diff --format json` object (see docs/diff.md)."""
    from ckpttool.report.progress import progress

    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise CkptError(f"--atol/--rtol must be finite and >= 0 (got {atol}, {rtol})")
    ck_a, ck_b = load(path_a), load(path_b)
    ck_a.require_safe()
    ck_b.require_safe()
    sd_a, sd_b = ck_a.state_dict(section_a), rename(ck_b.state_dict(section_b), maps)
    depth = depth if depth is not None else default_depth(list(sd_a) + list(sd_b))
    common = [k for k in sd_a if k in sd_b]
    shape_mm = [{"key": k, "a": list(sd_a[k].shape), "b": list(sd_b[k].shape)} for k in common
                if sd_a[k].shape != sd_b[k].shape]
    dtype_mm = [{"key": k, "a": sd_a[k].dtype, "b": sd_b[k].dtype} for k in common if sd_a[k].dtype != sd_b[k].dtype]
    pairs = [k for k in common if sd_a[k].shape == sd_b[k].shape]
    modules: dict[str, PairStats] = {}
    changed, nonfinite = [], []
    with progress(pairs, length=len(pairs), label="diff") as keys:
        for key in keys:
            st = compare_pair(sd_a[key], sd_b[key], atol, rtol)
            name = module_of(key, depth)
            modules.setdefault(name, PairStats()).merge(st)
            if not st.equal:
                changed.append({"key": key, "module": name, **st.result()})
            if st.nan_b or st.inf_b:
                nonfinite.append({"key": key, "nan": st.nan_b, "inf": st.inf_b, "nonfinite_in_a": st.nonfinite_a})
    rows = [{"name": n, "tensors": m.tensors, "changed": m.changed, **m.result()} for n, m in modules.items()]
    result = {
        "a": _side(ck_a, sd_a, section_a), "b": {**_side(ck_b, sd_b, section_b), "map": list(maps)},
        "depth": depth, "atol": atol, "rtol": rtol,
        "only_in_a": [k for k in sd_a if k not in sd_b], "only_in_b": [k for k in sd_b if k not in sd_a],
        "shape_mismatch": shape_mm, "dtype_mismatch": dtype_mm,
        "compared": len(pairs), "identical_tensors": len(pairs) - len(changed),
        "modules": sorted(rows, key=_rank), "changed_tensors": sorted(changed, key=_rank),
        "nonfinite_in_b": nonfinite, "meta": meta_diff(ck_a.meta, ck_b.meta), "notes": [],
    }
    if config or config_a or config_b:
        from ckpttool.comparison.configdiff import config_diff

        result["config"], notes = config_diff(ck_a, ck_b, config_a, config_b)
        result["notes"] += notes
    return result


def _rank(row: dict):
    """Non-finite values in B first, then by relative change (largest first)."""
    rel = row.get("rel_l2")
    return (-(row["nan_b"] + row["inf_b"] > 0), -(rel if rel is not None else -1.0))


def _side(ck, sd, section) -> dict:
    return {"path": ck.path, "format": ck.format, "layout": ck.layout.kind, "section": section or ck.weights_key,
            "stripped_prefix": sd.stripped_prefix, "tensors": len(sd), "bytes": sum(t.nbytes for t in sd.values())}


def rename(sd, maps):
    """Apply `--map REGEX=REPL` rules, in order, to every key of `sd` (B's keys)."""
    if not maps:
        return sd
    rules = []
    for m in maps:
        pattern, sep, repl = m.rpartition("=")
        if not sep or not pattern:
            raise CkptError(f"--map {m!r}: expected REGEX=REPLACEMENT")
        try:
            rules.append((re.compile(pattern), repl))
        except re.error as exc:
            raise CkptError(f"--map {m!r}: bad regex ({exc})") from None
    out = type(sd)()
    out.stripped_prefix, out.extras = sd.stripped_prefix, sd.extras
    origin = {}
    for key, t in sd.items():
        new = key
        try:
            for rx, repl in rules:
                new = rx.sub(repl, new)
        except (re.error, IndexError) as exc:
            raise CkptError(f"--map: bad replacement for {key!r} ({exc})") from None
        if new in out:
            raise CkptError(f"--map sends both {origin[new]!r} and {key!r} to {new!r}")
        out[new], origin[new] = t, key
    return out


def meta_diff(meta_a: dict, meta_b: dict) -> dict:
    a = {k: meta_a[k] for k in META_KEYS if k in meta_a}
    b = {k: meta_b[k] for k in META_KEYS if k in meta_b}
    return {"a": a, "b": b, "changed": [k for k in META_KEYS if (k in a or k in b) and a.get(k) != b.get(k)]}


def parse_fail_on(text: str | None) -> list[str]:
    kinds = [k.strip() for k in (text or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in FAIL_KINDS]
    if bad:
        raise CkptError(f"--fail-on: unknown kind {bad[0]!r} (choose from {', '.join(FAIL_KINDS)})")
    return kinds


def failures(result: dict, kinds) -> str | None:
    """The `--fail-on` verdict: a one-line reason when a named kind of difference exists, else None."""
    found = {
        "keys": len(result["only_in_a"]) + len(result["only_in_b"]) and
        f"{len(result['only_in_a'])} key(s) only in A, {len(result['only_in_b'])} only in B",
        "shapes": result["shape_mismatch"] and f"{len(result['shape_mismatch'])} shape mismatch(es)",
        "dtypes": result["dtype_mismatch"] and f"{len(result['dtype_mismatch'])} dtype mismatch(es)",
        "values": result["changed_tensors"] and f"{len(result['changed_tensors'])} tensor(s) changed values",
        "nonfinite": result["nonfinite_in_b"] and f"{len(result['nonfinite_in_b'])} tensor(s) hold NaN/Inf in B",
        "config": result.get("config") and f"{len(result['config'])} config key(s) differ",
    }
    reasons = [found[k] for k in kinds if found.get(k)]
    return "; ".join(reasons) or None
