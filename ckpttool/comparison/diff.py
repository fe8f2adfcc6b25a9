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
from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.io import load
from ckpttool.io.dtypes import widen_bfloat16
from ckpttool.report.result import Report, extra
from ckpttool.summary.tree import BUFFER_NAMES, default_depth, module_of

# A float32 square below 2**-60 may hold subnormal terms (|x| < 2**-63 squares below float32's smallest normal,
# losing digits or flushing to 0); summed over a 64 Ki chunk they are < 2**-110, so a sum at or above 2**-60 is
# exact to float32 rounding and smaller sums are redone in float64.
TINY32 = 2.0 ** -60
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
                 "valued", "changed_elements", "numel")

    def __init__(self):
        self.aa = self.bb = self.ab = self.dd = self.max_abs = 0.0
        self.nan_b = self.inf_b = self.nonfinite_a = self.tensors = self.changed = 0
        self.changed_elements = self.numel = 0
        self.equal = self.valued = True

    def merge(self, o: "PairStats") -> None:
        self.aa, self.bb, self.ab, self.dd = self.aa + o.aa, self.bb + o.bb, self.ab + o.ab, self.dd + o.dd
        self.max_abs = max(self.max_abs, o.max_abs)
        self.nan_b, self.inf_b, self.nonfinite_a = self.nan_b + o.nan_b, self.inf_b + o.inf_b, \
            self.nonfinite_a + o.nonfinite_a
        self.tensors += 1
        self.changed += not o.equal
        self.changed_elements += o.changed_elements
        self.numel += o.numel
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
    st.numel = ta.numel
    if ta.dtype.startswith(NO_VALUES) or tb.dtype.startswith(NO_VALUES):
        st.valued = False
        st.equal = ta.dtype == tb.dtype and bool(np.array_equal(ta.raw(), tb.raw()))
        if not st.equal:
            same = ta.raw().reshape(-1) == tb.raw().reshape(-1) if ta.dtype == tb.dtype else False
            st.changed_elements = int(ta.numel - np.count_nonzero(same))
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
    if x.dtype == np.float32 and ((aa < TINY32 and x.any()) or (bb < TINY32 and y.any()) or (dd < TINY32 and mx > 0)):
        return _nonfinite_chunk(x, y, st, atol, rtol)   # squares (partly) subnormal in float32: redo in float64
    st.aa, st.bb, st.dd = st.aa + aa, st.bb + bb, st.dd + dd
    st.ab += float(np.dot(x, y))
    st.max_abs = max(st.max_abs, mx)
    if mx > atol:
        # x != y into a bool array, then counted: ~20x faster than count_nonzero over the float difference
        n = int(np.count_nonzero(np.abs(d) > atol + rtol * np.abs(x))) if atol or rtol else \
            int(np.count_nonzero(np.not_equal(x, y)))
        st.changed_elements += n
        st.equal = st.equal and n == 0


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
    differ = int(np.count_nonzero(~((xs == ys) | (np.isnan(xs) & np.isnan(ys)))))
    x, y = x[both].astype(np.float64), y[both].astype(np.float64)
    if x.size:
        d = y - x
        st.aa, st.bb = st.aa + float(np.dot(x, x)), st.bb + float(np.dot(y, y))
        st.ab, st.dd = st.ab + float(np.dot(x, y)), st.dd + float(np.dot(d, d))
        ad = np.abs(d)
        st.max_abs = max(st.max_abs, float(ad.max()))
        differ += int(np.count_nonzero(ad > atol + rtol * np.abs(x)))
    st.changed_elements += differ
    st.equal = st.equal and differ == 0


# --- the whole diff -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffReport(Report):
    """What `diff` found; `to_dict()` is the `ckpt diff --format json` object (keys: docs/diff.md)."""

    a: dict                        # path, format, layout, section, stripped_prefix, tensors, bytes
    b: dict                        # the same, plus the `map` rules applied to B's keys
    depth: int
    atol: float
    rtol: float
    only_in_a: list
    only_in_b: list
    shape_mismatch: list           # [{key, a, b}]
    dtype_mismatch: list           # [{key, a, b}]
    compared: int
    identical_tensors: int
    modules: list                  # ranked: NaN/Inf new in B first, then by relative L2 change
    changed_tensors: list
    nonfinite_in_b: list
    meta: dict                     # {a, b, changed}
    notes: list
    config: list | None = None     # with config (or config_a/config_b): the config keys that differ
    failed: str | None = extra()   # with fail_on: the one-line reason (`failures`), or None


def diff(path_a: str, path_b: str, depth: int | None = None, section_a: str | None = None,
         section_b: str | None = None, maps=(), atol: float = 0.0, rtol: float = 0.0, config: bool = False,
         config_a: str | None = None, config_b: str | None = None, progress: bool | None = None,
         fail_on=()) -> DiffReport:
    """Compare two checkpoints (`ckpt diff`); `.to_dict()` is the `--format json` object (see docs/diff.md).
    `fail_on`: kinds (a list, or the CLI's comma-separated text) whose differences fail the check: `.failed`
    says why (`config` compares the configs too). `progress`: a bar of the bytes compared (both files' tensors;
    ckpttool.report.progress)."""
    from ckpttool.report.progress import track

    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise CkptError(f"--atol/--rtol must be finite and >= 0 (got {atol}, {rtol})")
    kinds = parse_fail_on(fail_on)
    config = config or "config" in kinds
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
    modules: dict[str, ModuleStats] = {}
    changed, nonfinite = [], []
    size = lambda k: sd_a[k].nbytes + sd_b[k].nbytes  # noqa: E731
    for key in track(pairs, "comparing tensors", sum(map(size, pairs)), "B", size, progress):
        ta, tb = sd_a[key], sd_b[key]
        st = compare_pair(ta, tb, atol, rtol)
        name, kind = module_of(key, depth), tensor_kind(key, ta, tb)
        mod = modules.setdefault(name, ModuleStats(name))
        counter = mod.add(key, kind, st, ta, tb)
        if not st.equal:
            changed.append({"key": key, "module": name, "kind": kind, **st.result(),
                            "changed_elements": st.changed_elements, "numel": st.numel, **(counter or {})})
        if st.nan_b or st.inf_b:
            nonfinite.append({"key": key, "nan": st.nan_b, "inf": st.inf_b, "nonfinite_in_a": st.nonfinite_a})
    rows = [m.row() for m in modules.values()]
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
    return DiffReport.from_dict(result, failed=failures(result, kinds))


class ModuleStats:
    """One module's pairs: floating parameters, floating buffers and integer tensors kept apart, so that a counter
    (`num_batches_tracked` ~ the iteration count) or BN statistics cannot masquerade as a weight change."""

    def __init__(self, name: str):
        self.name, self.tensors, self.changed = name, 0, 0
        self.params, self.buffers = PairStats(), PairStats()
        self.nan_b = self.inf_b = 0
        self.integer: list[dict] = []

    def add(self, key: str, kind: str, st: PairStats, ta, tb) -> dict | None:
        self.tensors += 1
        self.changed += not st.equal
        self.nan_b, self.inf_b = self.nan_b + st.nan_b, self.inf_b + st.inf_b
        if kind == "param":
            self.params.merge(st)
        elif kind == "buffer":
            self.buffers.merge(st)
        elif not st.equal:
            counter = integer_change(key, ta, tb, st)
            self.integer.append(counter)
            return {k: v for k, v in counter.items() if k in ("a", "b", "delta")}
        return None

    def row(self) -> dict:
        p = self.params.result() if self.params.tensors else \
            {"rel_l2": None, "max_abs": None, "cosine": None}
        buf = None
        if self.buffers.tensors:
            b = self.buffers.result()
            buf = {"tensors": self.buffers.tensors, "changed": self.buffers.changed, "rel_l2": b["rel_l2"],
                   "max_abs": b["max_abs"], "cosine": b["cosine"]}
        return {"name": self.name, "tensors": self.tensors, "changed": self.changed,
                "params": self.params.tensors, "params_changed": self.params.changed,
                "changed_elements": self.params.changed_elements, "numel": self.params.numel,
                "rel_l2": p["rel_l2"], "max_abs": p["max_abs"], "cosine": p["cosine"],
                "norm_a": math.sqrt(self.params.aa), "norm_b": math.sqrt(self.params.bb),
                "nan_b": self.nan_b, "inf_b": self.inf_b, "buffers": buf, "integer": self.integer}


def tensor_kind(key: str, ta, tb) -> str:
    """'param' (floating, not a known buffer name), 'buffer' (floating buffer) or 'integer' (counters, indices,
    masks: compared exactly, reported by value)."""
    if not (ta.is_floating and tb.is_floating):
        return "integer"
    return "buffer" if key.rsplit(".", 1)[-1] in BUFFER_NAMES else "param"


def integer_change(key: str, ta, tb, st: PairStats) -> dict:
    """An integer tensor that changed: its values when it is a scalar (`num_batches_tracked +19`), else how many
    elements changed."""
    row = {"key": key.rsplit(".", 1)[-1], "tensor": key, "changed_elements": st.changed_elements, "numel": st.numel}
    if ta.numel == 1 and not ta.dtype.startswith(NO_VALUES):
        a, b = ta.numpy().reshape(-1)[0].item(), tb.numpy().reshape(-1)[0].item()
        row.update(a=a, b=b, delta=b - a)
    return row


def integer_text(c: dict) -> str:
    if "delta" in c:
        return f"{c['key']} {c['delta']:+g}"
    return f"{c['key']} {c['changed_elements']}/{c['numel']} changed"


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


def parse_fail_on(text) -> list[str]:
    """`--fail-on` kinds from `"keys,shapes"` (or a list of kinds), checked."""
    kinds = [k.strip() for k in (text.split(",") if isinstance(text, str) else text or ()) if k.strip()]
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
