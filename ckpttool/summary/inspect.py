"""`inspect(path)`: everything a researcher wants to know about a checkpoint, without running code from it."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.io import StateDict, load
from ckpttool.report.result import Report, extra
from ckpttool.summary import training
from ckpttool.summary.stats import Moments, tensor_moments
from ckpttool.summary.tree import default_depth, filter_keys, module_of, module_rows

SIBLING_OUTLIER = 10.0  # a module whose RMS is this many times its siblings' median is flagged
STAT_KEYS = ("min", "max", "mean", "std", "l2", "rms")  # the value statistics of a module row


@dataclass(frozen=True)
class InspectReport(Report):
    """What `inspect` found; `to_dict()` is the `ckpt inspect --format json` object (keys: docs/inspect.md)."""

    path: str
    format: str
    file_bytes: int
    layout: str
    meta: dict
    weights_key: str | None
    stripped_prefix: str | None
    num_tensors: int
    total_params: int
    total_bytes: int
    depth: int
    modules: list
    sections: dict
    optimizer: dict | None
    schedulers: list
    scalars: dict
    ema: dict | None
    foreign_globals: list
    suspicious_globals: list
    trusted: bool
    safety: dict                   # verdict, summary, globals
    notes: list
    special_tensors: list | None = None
    config: str | None = None      # with config=True: the embedded training config (meta.cfg)
    keys: list | None = None       # with keys=True: one row per tensor
    nonfinite: list | None = None  # with stats or check_finite: [{key, nan, inf}] of tensors holding NaN/Inf
    failed: str | None = extra()   # with check_finite: why the check failed, or None

    @property
    def verdict(self) -> str:
        """'data', 'not verified' or 'code' (see docs/security.md)."""
        return self.safety["verdict"]


def inspect(path: str, depth: int | None = None, filter: str | None = None, keys: bool = False,
            config: bool = False, stats: bool = False, section: str | None = None, trust: bool = False,
            on_tensor=None, progress: bool | None = None, check_finite: bool = False) -> InspectReport:
    """Describe a checkpoint (`ckpt inspect`); `.to_dict()` is the `--format json` object.
    `check_finite`: read the values for NaN/Inf only (`.nonfinite`; `.failed` says which when there are any; the
    module rows carry no statistics unless `stats`). `progress`: when values are read, a bar of the bytes read
    (ckpttool.report.progress)."""
    ck = load(path, trust=trust)
    notes = list(ck.layout.notes) + list(ck.judge.notes)
    try:
        sd = ck.state_dict(section)
    except CkptError:
        if section is not None:
            raise
        sd = StateDict()
        notes.append("no tensors found in the file")
    shown = filter_keys(sd, filter)
    depth = depth if depth is not None else default_depth(sd.keys())
    modules = module_rows(shown, depth)
    meta = {k: v for k, v in ck.meta.items() if k not in ("cfg", "config")}
    root = ck.root if isinstance(ck.root, dict) else {}
    result = {
        "path": ck.path, "format": ck.format, "file_bytes": ck.file_bytes, "layout": ck.layout.kind,
        "meta": meta, "weights_key": section or ck.weights_key, "stripped_prefix": sd.stripped_prefix,
        "num_tensors": len(shown), "total_params": sum(t.numel for t in shown.values()),
        "total_bytes": sum(t.nbytes for t in shown.values()), "depth": depth, "modules": modules,
        "sections": ck.sections(),
        "optimizer": training.optimizer_summary(root.get("optimizer", root.get("optimizer_states"))),
        "schedulers": training.schedulers_summary(root.get("param_schedulers", root.get("lr_schedulers"))),
        "scalars": training.last_scalars(root.get("message_hub")),
        "ema": training.ema_summary(root, ck.layout.kind),
        "foreign_globals": ck.foreign_globals, "suspicious_globals": ck.suspicious_globals, "trusted": ck.trusted,
        "safety": {"verdict": ck.verdict, "summary": ck.safety_summary,
                   "globals": [{k: u[k] for k in ("name", "use", "verdict", "allowed_by", "count", "detail")}
                               for u in ck.global_uses]},
        "notes": notes,
    }
    if result["optimizer"]:
        from ckpttool.summary.tree import BUFFER_NAMES

        params = [k for k, t in sd.items() if t.is_floating and k.rsplit(".", 1)[-1] not in BUFFER_NAMES]
        training.name_groups(result["optimizer"]["group_sets"], params)
    special = special_tensors(sd)
    if special:
        result["special_tensors"] = special
    if sd.stripped_prefix:
        result["notes"].append(f"prefix {sd.stripped_prefix!r} stripped (every key had it)")
    if config:
        result["config"] = ck.meta.get("cfg") or ck.meta.get("config")
    if keys:
        result["keys"] = [{"key": k, "shape": list(t.shape), "dtype": t.dtype, "params": t.numel,
                           "kind": "param" if t.is_param else "tensor"} for k, t in shown.items()]
    if stats or check_finite:
        _add_stats(result, shown, depth, on_tensor, progress)
    if check_finite and not stats:  # --check-finite alone: the plain module rows
        for row in result["modules"]:
            for k in STAT_KEYS:
                row.pop(k, None)
    bad = result.get("nonfinite") if check_finite else None
    failed = f"{len(bad)} tensor(s) hold NaN/Inf, first: {bad[0]['key']}" if bad else None
    return InspectReport.from_dict(result, failed=failed)


def special_tensors(sd) -> list[dict]:
    """Quantized, sparse, nested and meta tensors: facts only (they are not in the module numbers)."""
    from ckpttool.io.tensor import SpecialTensor

    return [{"key": k, "layout": v.layout, "dtype": v.dtype, "shape": list(v.shape), **v.info}
            for k, v in sd.extras.items() if isinstance(v, SpecialTensor)]


def _add_stats(result: dict, sd, depth: int, on_tensor=None, progress=None) -> None:
    from ckpttool.report.progress import track

    per_module: dict[str, Moments] = {}
    per_module_float: dict[str, Moments] = {}  # the RMS outlier check ignores integer buffers (num_batches_tracked)
    per_key = {}
    items = list(sd.items())
    for key, t in track(items, "reading tensors (statistics)", result["total_bytes"], "B", lambda kt: kt[1].nbytes,
                        progress):
        m = tensor_moments(t)
        per_key[key] = m.result()
        per_module.setdefault(module_of(key, depth), Moments()).merge(m)
        if t.is_floating:
            per_module_float.setdefault(module_of(key, depth), Moments()).merge(m)
        if on_tensor is not None:
            on_tensor(t)
    for row in result["modules"]:
        # values over floating tensors: an integer counter (num_batches_tracked ~ iterations) is no module value
        m = per_module_float.get(row["name"]) or per_module[row["name"]]
        row.update({k: v for k, v in m.result().items()})
        f = per_module_float.get(row["name"])
        row["rms"] = math.sqrt(f.sumsq / f.finite) if f is not None and f.finite else None
    _flag(result["modules"])
    if "keys" in result:
        for row in result["keys"]:
            row.update(per_key[row["key"]])
    result["nonfinite"] = [{"key": k, "nan": s["nan"], "inf": s["inf"]} for k, s in per_key.items()
                           if s["nan"] or s["inf"]]


def _flag(rows: list[dict]) -> None:
    """Mark modules with NaN/Inf, or whose RMS is far above their siblings' (same parent) median."""
    by_parent: dict[str, list[dict]] = {}
    for row in rows:
        by_parent.setdefault(row["name"].rpartition(".")[0], []).append(row)
        row["flags"] = ["non-finite"] if row["nan"] or row["inf"] else []
    for siblings in by_parent.values():
        rms = [r["rms"] for r in siblings if r["rms"]]
        if len(rms) < 3:
            continue
        med = statistics.median(rms)
        for r in siblings:
            if r["rms"] and med > 0 and r["rms"] > SIBLING_OUTLIER * med:
                r["flags"].append(f"rms {r['rms'] / med:.0f}x siblings")
