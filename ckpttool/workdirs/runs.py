"""An mmengine work_dir: its checkpoints, the validation metrics logged for them, the best, and collapses.

Metrics come from `*/vis_data/scalars.json` (exact floats; a validation line is one without `lr`/`epoch`/`iter`,
its `step` is the epoch, or the iteration in iter-based runs) and from `*.log` lines such as
`Epoch(val) [11][8244/8244]  acc/top1: 0.5745  ...` (4 decimals). Logs of later runs (resumes) override earlier
ones; scalars.json overrides the log. Nothing is imported from the work_dir and no checkpoint code runs.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re

from ckpttool.errors import CkptError

CKPT_RE = re.compile(r"^(?:best_(?P<best>.+)_)?(?P<unit>epoch|iter)_(?P<step>\d+)\.(?:pth|pt|ckpt|safetensors)$")
VAL_RE = re.compile(r"\b(Epoch|Iter)\(val\)\s*(?:\[\s*(\d+)\])?\s*\[\s*\d+/\s*\d+\]\s+(.*)$")
TRAIN_RE = re.compile(r"\b(Epoch|Iter)\(train\)\s*\[\s*(\d+)\s*[\]/]")
NOT_METRICS = {"eta", "time", "data_time", "memory", "lr", "loss", "step", "epoch", "iter"}
MIN_RE = re.compile(r"loss|error|(^|[/_])(err|mr|eer|fpr|wer|cer|miss)([/_]|$)", re.I)
PERCENT_RE = re.compile(r"acc|top|map|(^|[/_])(ap|ar|iou|miou|recall|precision|f1)", re.I)
DEFAULT_COLLAPSE = 0.2


def metric_mode(name: str) -> str:
    """'min' for losses and error/miss rates, else 'max'."""
    return "min" if MIN_RE.search(name) else "max"


def is_percent(name: str, values) -> bool:
    """Accuracy-like metric logged as a fraction: shown as a percentage in tables."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return bool(PERCENT_RE.search(name)) and bool(vals) and all(0.0 <= v <= 1.0 for v in vals)


# --- parsing --------------------------------------------------------------------------------------------------
def parse_log_text(text: str) -> tuple[str | None, dict]:
    """Validation metrics in mmengine log text: (unit, {step: {metric: value}}); unit 'epoch' or 'iter'."""
    evals: dict[int, dict] = {}
    unit, last_iter = None, None
    for line in text.splitlines():
        t = TRAIN_RE.search(line)
        if t:
            unit = unit or ("epoch" if t.group(1) == "Epoch" else "iter")
            if t.group(1) == "Iter":
                last_iter = int(t.group(2))
            continue
        v = VAL_RE.search(line)
        if not v:
            continue
        metrics = _items(v.group(3))
        if not metrics:
            continue  # a per-iteration progress line (eta/time only)
        if v.group(2) is not None:
            unit, step = "epoch", int(v.group(2))
        elif last_iter is not None:
            unit, step = "iter", last_iter
        else:
            continue
        evals.setdefault(step, {}).update(metrics)
    return unit, evals


def _items(text: str) -> dict:
    out = {}
    for part in re.split(r"\s{2,}", text.strip()):
        name, sep, value = part.partition(": ")
        name = name.strip()
        if not sep or not name or name in NOT_METRICS:
            continue
        try:
            out[name] = float(value.strip())
        except ValueError:
            continue
    return out


def parse_scalars(path: str) -> tuple[str | None, dict]:
    """Validation lines of an mmengine `scalars.json` (one JSON object per line)."""
    evals: dict[int, dict] = {}
    unit = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if "lr" in rec or "epoch" in rec or "iter" in rec:
                unit = unit or ("epoch" if "epoch" in rec else "iter")
                continue
            metrics = {k: float(v) for k, v in rec.items()
                       if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if metrics and isinstance(rec.get("step"), int):
                evals.setdefault(rec["step"], {}).update(metrics)
    return unit, evals


# --- the work_dir ---------------------------------------------------------------------------------------------
def checkpoints(work_dir: str, read_meta: bool = True) -> list[dict]:
    """Checkpoint files named by mmengine's CheckpointHook (epoch_N, iter_N, best_<metric>_epoch_N)."""
    out = []
    for name in sorted(os.listdir(work_dir)):
        m = CKPT_RE.match(name)
        path = os.path.join(work_dir, name)
        if not m or not os.path.isfile(path):
            continue
        row = {"name": name, "path": path, "bytes": os.path.getsize(path), "unit": m["unit"],
               "step": int(m["step"]), "kind": "best" if m["best"] else "regular", "epoch": None, "iter": None}
        row[m["unit"]] = int(m["step"])
        if read_meta:
            _add_meta(row)
        out.append(row)
    return out


def _add_meta(row: dict) -> None:
    from ckpttool.io import load

    try:
        meta = load(row["path"]).meta
    except CkptError as exc:
        row["error"] = str(exc)
        return
    for key in ("epoch", "iter"):
        if isinstance(meta.get(key), int) and row[key] is None:
            row[key] = meta[key]


def scan(work_dir: str, collapse_drop: float = DEFAULT_COLLAPSE, modes: dict | None = None,
         read_meta: bool = True) -> dict:
    """The `ckpt runs DIR` object: rows per evaluation/checkpoint, best per metric, collapses."""
    work_dir = os.fspath(work_dir)
    if not os.path.isdir(work_dir):
        raise CkptError(f"{work_dir}: not a directory")
    if not 0 < collapse_drop < 1:
        raise CkptError(f"collapse threshold must lie between 0 and 1 (a fraction of the previous value), "
                        f"got {collapse_drop}")
    ckpts = checkpoints(work_dir, read_meta)
    unit, evals, sources = _evaluations(work_dir)
    unit = unit or (ckpts[0]["unit"] if ckpts else "epoch")
    by_step: dict[int, dict] = {}
    for step, metrics in evals.items():
        by_step.setdefault(step, _row(unit, step))["metrics"] = dict(metrics)
    for c in ckpts:
        if c["unit"] != unit:
            continue
        row = by_step.setdefault(c["step"], _row(unit, c["step"]))
        if c["kind"] == "regular":
            row.update(checkpoint=c["name"], path=c["path"], bytes=c["bytes"])
            if c["epoch"] is not None:
                row["epoch"] = c["epoch"]
            if c["iter"] is not None:
                row["iter"] = c["iter"]
        else:
            row["best_files"].append(c["name"])
    rows = [by_step[s] for s in sorted(by_step)]
    names = sorted({k for r in rows for k in r["metrics"]})
    metrics = {}
    for name in names:
        mode = (modes or {}).get(name) or metric_mode(name)
        metrics[name] = _metric_summary(name, mode, rows, collapse_drop)
    last = os.path.join(work_dir, "last_checkpoint")
    return {"work_dir": work_dir, "unit": unit, "sources": sources, "collapse_drop": collapse_drop,
            "metrics": metrics, "rows": rows, "checkpoints": ckpts,
            "last_checkpoint": _read_text(last).strip() if os.path.isfile(last) else None}


def _row(unit: str, step: int) -> dict:
    return {"step": step, "epoch": step if unit == "epoch" else None, "iter": step if unit == "iter" else None,
            "checkpoint": None, "path": None, "bytes": None, "metrics": {}, "best": [], "collapse": [],
            "best_files": []}


def _evaluations(work_dir: str):
    unit, evals, sources = None, {}, []
    logs = sorted(set(glob.glob(os.path.join(work_dir, "*.log")) + glob.glob(os.path.join(work_dir, "*", "*.log"))))
    scalars = sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")))
    for path in logs + scalars:
        try:
            if path.endswith(".json"):
                u, found = parse_scalars(path)
            else:
                with open(path, encoding="utf-8", errors="replace") as f:
                    u, found = parse_log_text(f.read())
        except OSError as exc:
            raise CkptError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not found:
            continue
        if unit and u and u != unit:
            continue  # a run of the other kind in the same folder: keep the first kind seen
        unit = unit or u
        sources.append(os.path.relpath(path, work_dir))
        for step, m in found.items():
            evals.setdefault(step, {}).update(m)
    return unit, evals, sources


def _metric_summary(name: str, mode: str, rows: list[dict], drop: float) -> dict:
    seq = [r for r in rows if name in r["metrics"] and math.isfinite(r["metrics"][name])]
    sign = 1.0 if mode == "max" else -1.0
    best = max(seq, key=lambda r: (sign * r["metrics"][name], r["step"]), default=None)
    if best is not None:
        best["best"].append(name)
    collapses = []
    for prev, cur in zip(seq, seq[1:]):
        a, b = prev["metrics"][name], cur["metrics"][name]
        worse = sign * (a - b)
        if a != 0 and worse / abs(a) > drop:
            cur["collapse"].append(name)
            collapses.append({"from_step": prev["step"], "to_step": cur["step"], "from": a, "to": b,
                              "drop": worse / abs(a)})
    values = [r["metrics"][name] for r in seq]
    return {"mode": mode, "evaluations": len(seq), "percent": is_percent(name, values),
            "best": None if best is None else {"step": best["step"], "value": best["metrics"][name],
                                               "checkpoint": best["checkpoint"]},
            "collapses": collapses}


# --- selection ------------------------------------------------------------------------------------------------
def select(info: dict, last: int | None = None, best: int | None = None, metric: str | None = None,
           mode: str | None = None) -> list[dict]:
    """Rows (with checkpoints) chosen by `--last N` or `--best N --metric NAME`, in training order."""
    rows = [r for r in info["rows"] if r["checkpoint"]]
    if (last is None) == (best is None):
        raise CkptError("choose checkpoints with exactly one of --last N or --best N --metric NAME")
    n = last if last is not None else best
    if n < 1:
        raise CkptError("--last/--best need N >= 1")
    if last is not None:
        if len(rows) < n:
            raise CkptError(f"--last {n}: only {len(rows)} checkpoint(s) in {info['work_dir']}")
        return rows[-n:]
    if not metric:
        raise CkptError("--best N needs --metric NAME")
    if metric not in info["metrics"]:
        have = ", ".join(info["metrics"]) or "none"
        raise CkptError(f"metric {metric!r} not logged in {info['work_dir']} (metrics: {have})")
    mode = mode or info["metrics"][metric]["mode"]
    sign = 1.0 if mode == "max" else -1.0
    scored = [r for r in rows if metric in r["metrics"] and math.isfinite(r["metrics"][metric])]
    if len(scored) < n:
        raise CkptError(f"--best {n}: only {len(scored)} checkpoint(s) in {info['work_dir']} have {metric} logged")
    chosen = sorted(scored, key=lambda r: (sign * r["metrics"][metric], r["step"]), reverse=True)[:n]
    return sorted(chosen, key=lambda r: r["step"])


def choose(work_dir: str, last=None, best=None, metric=None, mode=None, every=False):
    """Checkpoints of `work_dir` for averaging: (paths, {path: metric value}, rows for the report). `every`
    (greedy soups) takes all checkpoints when neither --last nor --best is given."""
    info = scan(work_dir, modes={metric: mode} if metric and mode else None)
    if every and last is None and best is None:
        rows = [r for r in info["rows"] if r["checkpoint"]]
    else:
        rows = select(info, last=last, best=best, metric=metric, mode=mode)
    if not rows:
        raise CkptError(f"no checkpoints in {work_dir}")
    known = {r["path"]: r["metrics"].get(metric) for r in rows} if metric else None
    selected = [{"checkpoint": r["checkpoint"], "epoch": r["epoch"], "iter": r["iter"],
                 "metric": r["metrics"].get(metric) if metric else None} for r in rows]
    return [r["path"] for r in rows], known, selected


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
