"""An mmengine work_dir: its checkpoints, the validation metrics logged for them, the best, and collapses.

Metrics come from `*/vis_data/scalars.json` (exact floats; a validation line is one without `lr`/`epoch`/`iter`,
its `step` is the epoch, or the iteration in iter-based runs) and from `*.log` lines such as
`Epoch(val) [11][8244/8244]  acc/top1: 0.5745  ...` (4 decimals). Logs of later runs (resumes) override earlier
ones; scalars.json overrides the log. Nothing is imported from the work_dir and no checkpoint code runs.

Training lines (those with `lr`) give per epoch the lr in effect during it (message_hub `train/lr`, logged every
`interval` iterations), the mean and max train loss and grad_norm; loss spikes and NaN/Inf are flagged.
Runs: each `<timestamp>/` folder is one run (its `Exp name:` line names it as checkpoints' `meta.experiment_name`
do; `Load checkpoint from …` + `resumed epoch: N` say where it resumed). The run `last_checkpoint` points to, and
the runs it resumed from up to their resume points, form the lineage shown as rows; checkpoints and evaluations of
other runs are listed apart as abandoned, with a warning, and never chosen by `--last/--best`.
timm's output folders (`checkpoint-N.pth.tar`, `model_best.pth.tar`, `last.pth.tar`, `summary.csv`, the metric
stored in the checkpoint) are read too.
"""
from __future__ import annotations

import csv
import glob
import math
import os
import re
from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.report.result import Report, extra
from ckpttool.report.streams import stream_of

CKPT_RE = re.compile(r"^(?:best_(?P<best>.+)_)?(?P<unit>epoch|iter)_(?P<step>\d+)\.(?:pth|pt|ckpt|safetensors)$")
TIMM_RE = re.compile(r"^(?:checkpoint-(?P<step>\d+)|(?P<best>model_best)|(?P<last>last))\.pth\.tar$")
PAIR_RE = re.compile(r"([A-Za-z_][\w/.:-]*): (-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf|NaN|Inf))(?=\s|$)")
EXP_RE = re.compile(r"Exp name: (\S+)")
LOAD_RE = re.compile(r"Load checkpoint from (\S+)")
RESUMED_RE = re.compile(r"resumed epoch: (\d+), iter: (\d+)")
TRAIN_KEYS = ("lr", "loss", "grad_norm")
SPIKE = 2.0               # an epoch's max loss above SPIKE x the previous epoch's mean loss
MIN_POINTS = 0.05         # a fraction-logged accuracy must drop by 5 points to be a collapse (10% -> 7% is noise)
# one \s* before each bracket, never two in a row: `Epoch(val)` + 100k spaces must not backtrack quadratically
VAL_RE = re.compile(r"\b(Epoch|Iter)\(val\)\s*(?:\[\s*(\d+)\]\s*)?\[\s*\d+/\s*\d+\]\s+(.*)$")
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
def parse_train_text(text: str) -> list[dict]:
    """Training lines of mmengine log text: [{epoch|iter, lr, loss, grad_norm}] (4 decimals, as printed)."""
    out = []
    for line in text.splitlines():
        t = TRAIN_RE.search(line)
        if not t:
            continue
        vals = {k: float(v) for k, v in PAIR_RE.findall(line[t.end():]) if k in TRAIN_KEYS}
        if vals:
            out.append({("epoch" if t.group(1) == "Epoch" else "iter"): int(t.group(2)), **vals})
    return out


def _json_records(path: str):
    """The JSON objects of a JSON-lines file (an mmengine `scalars.json`); other lines are skipped."""
    from ckpttool.plain import json_objects

    with open(path, encoding="utf-8", errors="replace") as f:
        yield from json_objects(f)


def parse_train_scalars(path: str) -> list[dict]:
    """Training lines of a `scalars.json` (exact floats; NaN/Infinity as json writes them)."""
    out = []
    for rec in _json_records(path):
        if "lr" in rec:
            row = {k: float(rec[k]) for k in TRAIN_KEYS if isinstance(rec.get(k), (int, float))}
            for k in ("epoch", "iter"):
                if isinstance(rec.get(k), int):
                    row[k] = rec[k]
            out.append(row)
    return out


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
    for rec in _json_records(path):
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
    """Checkpoint files named by mmengine's CheckpointHook (epoch_N, iter_N, best_<metric>_epoch_N) or by timm's
    CheckpointSaver (checkpoint-N.pth.tar, model_best.pth.tar, last.pth.tar)."""
    out = []
    for name in sorted(os.listdir(work_dir)):
        path = os.path.join(work_dir, name)
        m, t = CKPT_RE.match(name), TIMM_RE.match(name)
        if not (m or t) or not os.path.isfile(path):
            continue
        row = {"name": name, "path": path, "bytes": os.path.getsize(path), "unit": "epoch", "step": None,
               "kind": "regular", "epoch": None, "iter": None, "experiment_name": None, "best_metric": None,
               "stored_metric": None}
        if m:
            row.update(unit=m["unit"], step=int(m["step"]), kind="best" if m["best"] else "regular",
                       best_metric=m["best"])
            row[m["unit"]] = int(m["step"])
        else:
            row.update(kind="best" if t["best"] else "last" if t["last"] else "regular",
                       step=int(t["step"]) if t["step"] else None, epoch=int(t["step"]) if t["step"] else None)
        if read_meta or t:
            _add_meta(row)
        if row["step"] is None:
            row["step"] = row[row["unit"]]
        if row["step"] is None:
            continue
        out.append(row)
    return out


def _add_meta(row: dict) -> None:
    from ckpttool.io import load

    try:
        ck = load(row["path"])
        meta = ck.meta
    except CkptError as exc:
        row["error"] = str(exc)
        return
    row["safety"] = ck.verdict  # what `ckpt inspect` would say; 'code' files are never handed on (--path, average)
    if ck.verdict != "data":
        row["safety_summary"] = ck.safety_summary
    for key in ("epoch", "iter"):
        if isinstance(meta.get(key), int) and row[key] is None:
            row[key] = meta[key]
    if isinstance(meta.get("experiment_name"), str):
        row["experiment_name"] = meta["experiment_name"]
    root = ck.root if isinstance(getattr(ck, "root", None), dict) else {}
    if row["name"].endswith(".pth.tar"):   # timm: epoch is the last finished epoch (0-based); metric stored
        epoch = root.get("epoch")
        if isinstance(epoch, int) and row["epoch"] is None:
            row["epoch"] = epoch
        if isinstance(root.get("metric"), (int, float)) and not isinstance(root.get("metric"), bool):
            row["stored_metric"] = float(root["metric"])


@dataclass(frozen=True)
class RunsReport(Report):
    """A work_dir as `scan` reads it (and `ckpttool.workdirs.listing.list_runs` shows it); `to_dict()` is the
    `ckpt runs --format json` object (keys: docs/runs.md)."""

    work_dir: str
    unit: str                      # epoch | iter
    sources: list                  # the logs and scalars.json files read
    collapse_drop: float
    metrics: dict                  # per metric: mode, evaluations, percent, best, collapses
    streams: dict                  # multi-stream models: stream -> its metric names
    rows: list                     # per evaluation/checkpoint of the current run's lineage, in training order
    events: list                   # collapses grouped per step
    checkpoints: list
    last_checkpoint: str | None
    runs: list                     # every run folder: name, experiment_name, resumes, steps, current
    abandoned: list                # evaluations/checkpoints of runs the current one does not continue
    warnings: list
    shown: list | None = None      # list_runs: the metrics shown (chosen by name/glob, or the default set)
    failed: str | None = extra()   # list_runs with fail_on_collapse: the collapses found, or None
    best_path: str | None = extra()  # list_runs with best=METRIC: the file holding the best weights for it

    @property
    def best(self) -> dict:
        """Per metric its best evaluation: {step, value, checkpoint, path} (None when never evaluated)."""
        return {name: s["best"] for name, s in self.metrics.items()}

    @property
    def collapses(self) -> list:
        """Every collapse of the metrics here, each with its `metric`."""
        return [dict(c, metric=m) for m, s in self.metrics.items() for c in s["collapses"]]


def scan(work_dir: str, collapse_drop: float = DEFAULT_COLLAPSE, modes: dict | None = None,
         read_meta: bool = True, min_points: float = MIN_POINTS) -> RunsReport:
    """What `ckpt runs DIR` reads: rows per evaluation/checkpoint of the current run's lineage (with the lr, loss
    and grad_norm of their epoch), best per metric, collapses (grouped per step in `events`), other runs apart."""
    work_dir = os.fspath(work_dir)
    if not os.path.isdir(work_dir):
        raise CkptError(f"{work_dir}: not a directory")
    if not 0 < collapse_drop < 1:
        raise CkptError(f"collapse threshold must lie between 0 and 1 (a fraction of the previous value), "
                        f"got {collapse_drop}")
    ckpts = checkpoints(work_dir, read_meta)
    runs = _runs(work_dir)
    last_path = os.path.join(work_dir, "last_checkpoint")
    last = None
    if os.path.isfile(last_path):
        with open(last_path, encoding="utf-8", errors="replace") as f:
            last = f.read().strip()
    lineage, owner = _lineage(runs, ckpts, last)
    units = [r["unit"] for r in runs if r["unit"]]
    unit = units[-1] if units else (ckpts[0]["unit"] if ckpts else "epoch")
    by_step: dict[int, dict] = {}
    abandoned, warnings = [], []
    for run in runs:
        if run["unit"] and run["unit"] != unit:
            continue  # a run of the other kind in the same folder
        for step, metrics in run["evals"].items():
            if owner(step) is run:
                row = by_step.setdefault(step, _row(unit, step))
                row["metrics"].update(metrics)
                row["run"] = run["experiment_name"] or run["name"]
            else:
                abandoned.append({"run": run["experiment_name"] or run["name"], "step": step, "metrics": metrics,
                                  "checkpoint": None})
        for step, train in _per_step(run["train"], unit, sorted(run["evals"])).items():
            if owner(step) is run:
                by_step.setdefault(step, _row(unit, step))["train"] = train
    names_in_lineage = {r["experiment_name"] for r in lineage if r["experiment_name"]}
    for c in ckpts:
        if c["unit"] != unit:
            continue
        run = owner(c["step"])
        mine = not c["experiment_name"] or not names_in_lineage or (
            run is not None and c["experiment_name"] == run["experiment_name"])
        if not mine:
            hit = next((a for a in abandoned if a["step"] == c["step"] and a["run"] == c["experiment_name"]), None)
            if hit is None:
                hit = {"run": c["experiment_name"], "step": c["step"], "metrics": {}, "checkpoint": None}
                abandoned.append(hit)
            hit.update(checkpoint=c["name"], path=c["path"])
            warnings.append(f"{c['name']} was written by run {c['experiment_name']}, which is not the run "
                            f"last_checkpoint continues ({lineage[-1]['experiment_name'] if lineage else '?'}): "
                            f"left out")
            continue
        row = by_step.setdefault(c["step"], _row(unit, c["step"]))
        if c["kind"] == "regular":
            row.update(checkpoint=c["name"], path=c["path"], bytes=c["bytes"])
            if c["epoch"] is not None and unit == "epoch":
                row["epoch"] = c["epoch"]
            if c["iter"] is not None:
                row["iter"] = c["iter"]
        else:
            row["best_files"].append(c["name"])
            row.setdefault("best_paths", {})[c["name"]] = c["path"]
            if row["checkpoint"] is None and c["kind"] == "last":
                row.update(checkpoint=c["name"], path=c["path"], bytes=c["bytes"])
        if c["stored_metric"] is not None and not row["metrics"]:
            row["metrics"]["metric"] = c["stored_metric"]
    rows = [by_step[s] for s in sorted(by_step)]
    names = sorted({k for r in rows for k in r["metrics"]})
    metrics = {}
    for name in names:
        mode = (modes or {}).get(name) or metric_mode(name)
        metrics[name] = _metric_summary(name, mode, rows, collapse_drop, min_points)
    _flag_training(rows)
    if abandoned and not warnings:
        gone = sorted({a["run"] for a in abandoned})
        warnings.append(f"evaluations of run(s) {', '.join(gone)} after the point the current run resumed from are "
                        f"left out")
    sources = [s for r in runs for s in r["sources"]]
    return RunsReport.from_dict({"work_dir": work_dir, "unit": unit, "sources": sources, "collapse_drop": collapse_drop,
            "metrics": metrics, "streams": streams(names), "rows": rows, "events": events(metrics, rows),
            "checkpoints": ckpts, "last_checkpoint": last,
            "runs": [{k: r[k] for k in ("name", "experiment_name", "resumed_from", "resume_step", "sources")}
                     | {"steps": sorted(r["evals"]), "current": r in lineage} for r in runs],
            "abandoned": sorted(abandoned, key=lambda a: (a["run"] or "", a["step"])), "warnings": warnings})


def _row(unit: str, step: int) -> dict:
    return {"step": step, "epoch": step if unit == "epoch" else None, "iter": step if unit == "iter" else None,
            "checkpoint": None, "path": None, "bytes": None, "metrics": {}, "best": [], "collapse": [],
            "best_files": [], "train": {}, "flags": [], "run": None}


def _runs(work_dir: str) -> list[dict]:
    """One entry per run: mmengine's `<timestamp>/` folders (log + vis_data/scalars.json), older runs' `*.log` at the
    top, timm's `summary.csv`; in time order (names are timestamps)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(work_dir, "*.log"))):
        groups.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
    for path in sorted(glob.glob(os.path.join(work_dir, "*", "*.log"))
                       + glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json"))):
        name = os.path.relpath(path, work_dir).split(os.sep)[0]
        groups.setdefault(name, []).append(path)
    if os.path.isfile(os.path.join(work_dir, "summary.csv")):
        groups.setdefault("summary.csv", []).append(os.path.join(work_dir, "summary.csv"))
    runs = []
    for name in sorted(groups):
        run = {"name": name, "experiment_name": None, "resumed_from": None, "resume_step": None, "unit": None,
               "evals": {}, "train": [], "sources": []}
        paths = sorted(groups[name], key=lambda p: p.endswith(".json"))   # scalars.json overrides the log
        for path in paths:
            try:
                _read_source(path, run)
            except OSError as exc:
                raise CkptError(f"cannot read {path}: {exc.strerror or exc}") from None
            if run["evals"] or run["train"]:
                run["sources"].append(os.path.relpath(path, work_dir))
        if run["evals"] or run["train"]:
            runs.append(run)
    return runs


def _read_source(path: str, run: dict) -> None:
    if path.endswith("summary.csv"):
        return _read_timm_summary(path, run)
    if path.endswith(".json"):
        u, found = parse_scalars(path)
        train = parse_train_scalars(path)
        if train:
            run["train"] = train   # exact values replace the log's 4 decimals
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        u, found = parse_log_text(text)
        run["train"] = run["train"] or parse_train_text(text)
        exp, load, resumed = EXP_RE.search(text), LOAD_RE.search(text), RESUMED_RE.search(text)
        if exp:
            run["experiment_name"] = exp.group(1)
        if resumed:
            run["resumed_from"] = load.group(1) if load else None
            run["resume_step"] = int(resumed.group(1 if (u or "epoch") == "epoch" else 2))
    run["unit"] = run["unit"] or u
    for step, m in found.items():
        run["evals"].setdefault(step, {}).update(m)


def _read_timm_summary(path: str, run: dict) -> None:
    """timm's train.py `summary.csv`: epoch, train_loss, eval_loss, eval_top1, eval_top5, lr per epoch."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for rec in csv.DictReader(f):
            try:
                epoch = int(float(rec.get("epoch", "")))
            except ValueError:
                continue
            vals = {}
            for k, v in rec.items():
                try:
                    vals[k] = float(v)
                except (TypeError, ValueError):
                    continue
            ev = {k: v for k, v in vals.items() if k.startswith("eval_")}
            if ev:
                run["evals"].setdefault(epoch, {}).update(ev)
            tr = {"epoch": epoch, **({"lr": vals["lr"]} if "lr" in vals else {}),
                  **({"loss": vals["train_loss"]} if "train_loss" in vals else {})}
            run["train"].append(tr)
    run["unit"] = "epoch"


def _lineage(runs: list[dict], ckpts: list[dict], last: str | None):
    """The runs the current one continues, oldest first, and `owner(step)`: the run whose numbers stand for a step.
    The current run is the one that wrote `last_checkpoint`'s file (its meta.experiment_name), else the newest."""
    if not runs:
        return [], lambda step: None
    current = runs[-1]
    if last:
        hit = next((c for c in ckpts if os.path.basename(c["path"]) == os.path.basename(last)), None)
        named = hit and hit["experiment_name"]
        current = next((r for r in reversed(runs) if named and r["experiment_name"] == named), current)
    chain, run = [current], current
    while run["resume_step"] is not None:
        i = runs.index(run)
        parent = next((r for r in reversed(runs[:i]) if run["resume_step"] in r["evals"] or any(
            t.get(r["unit"] or "epoch") == run["resume_step"] for t in r["train"])), None)
        if parent is None or parent in chain:
            break
        chain.insert(0, parent)
        run = parent
    limits = [(r, chain[i + 1]["resume_step"] if i + 1 < len(chain) else math.inf) for i, r in enumerate(chain)]

    def owner(step):
        for r, upto in limits:
            if step <= upto:
                return r
        return None

    return chain, owner


def _per_step(train: list[dict], unit: str, eval_steps: list[int]) -> dict:
    """Training records of one run summed up per epoch (per evaluation interval in iteration-based runs)."""
    out: dict[int, list[dict]] = {}
    for rec in train:
        if unit == "epoch" and "epoch" in rec:
            step = rec["epoch"]
        elif "iter" in rec:
            step = next((s for s in eval_steps if s >= rec["iter"]), rec["iter"])
        else:
            continue
        out.setdefault(step, []).append(rec)
    summary = {}
    for step, recs in out.items():
        row = {"records": len(recs)}
        for key in TRAIN_KEYS:
            vals = [r[key] for r in recs if key in r]
            if not vals:
                continue
            finite = [v for v in vals if math.isfinite(v)]
            row["nonfinite_" + key] = len(vals) - len(finite)
            if key == "lr":
                row["lr"], row["lr_first"] = vals[-1], vals[0]
            elif finite:
                row[key], row[key + "_max"] = sum(finite) / len(finite), max(finite)
        summary[step] = row
    return summary


def _flag_training(rows: list[dict]) -> None:
    """Loss / grad_norm spikes (an epoch's max above SPIKE x the previous epoch's mean) and NaN/Inf."""
    for key in ("loss", "grad_norm"):
        previous = None
        for row in rows:
            t = row["train"]
            if t.get("nonfinite_" + key):
                row["flags"].append(f"{key} NaN/Inf")
            if key in t:
                if previous and t[key + "_max"] > SPIKE * previous:
                    row["flags"].append(f"{key} spike")
                previous = t[key]


def streams(names) -> dict:
    """{stream: [metric names]} when the metrics come from several streams (RGB / Pose / fusion), else {}."""
    out: dict[str, list[str]] = {}
    for n in names:
        s, _ = stream_of(n)
        if s is not None:
            out.setdefault(s, []).append(n)
    return out if len(out) >= 2 else {}


def events(metrics: dict, rows: list[dict]) -> list[dict]:
    """Collapses grouped by the step they appear at: which streams dropped, by how much."""
    out: dict[int, dict] = {}
    for name, s in metrics.items():
        for c in s["collapses"]:
            ev = out.setdefault(c["to_step"], {"step": c["to_step"], "from_step": c["from_step"], "metrics": []})
            ev["from_step"] = min(ev["from_step"], c["from_step"])
            stream, kind = stream_of(name)
            scale = 100.0 if s["percent"] else 1.0
            ev["metrics"].append({"metric": name, "stream": stream, "kind": kind, "from": c["from"], "to": c["to"],
                                  "change": scale * (c["to"] - c["from"]), "percent": s["percent"]})
    for ev in out.values():
        ev["metrics"].sort(key=lambda m: m["change"] if metric_mode(m["metric"]) == "max" else -m["change"])
    return [out[k] for k in sorted(out)]


def _metric_summary(name: str, mode: str, rows: list[dict], drop: float, min_points: float = MIN_POINTS) -> dict:
    seq = [r for r in rows if name in r["metrics"] and math.isfinite(r["metrics"][name])]
    sign = 1.0 if mode == "max" else -1.0
    best = None
    for r in seq:   # mmengine's save_best rule: only a strictly better value replaces the best
        if best is None or sign * r["metrics"][name] > sign * best["metrics"][name]:
            best = r
    if best is not None:
        best["best"].append(name)
    values = [r["metrics"][name] for r in seq]
    percent = is_percent(name, values)
    collapses = []
    for prev, cur in zip(seq, seq[1:]):
        a, b = prev["metrics"][name], cur["metrics"][name]
        worse = sign * (a - b)
        if a != 0 and worse / abs(a) > drop and not (percent and worse < min_points):
            cur["collapse"].append(name)
            collapses.append({"from_step": prev["step"], "to_step": cur["step"], "from": a, "to": b,
                              "drop": worse / abs(a)})
    return {"mode": mode, "evaluations": len(seq), "percent": percent,
            "best": None if best is None else {"step": best["step"], "value": best["metrics"][name],
                                               "checkpoint": best["checkpoint"], "path": best_path(best, name)},
            "collapses": collapses}


def best_path(row: dict, metric: str) -> str | None:
    """The file that holds a row's weights for `metric`: mmengine's `best_<metric>_…` copy when it kept one (what
    `save_best` names), timm's model_best, else the regular checkpoint."""
    tag = metric.replace("/", "_")
    for name, path in row.get("best_paths", {}).items():
        if name.startswith(f"best_{tag}_") or name == "model_best.pth.tar":
            return path
    return row["path"]


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
    # ties: the earlier checkpoint first, as mmengine's save_best keeps the first epoch that reached a value
    chosen = sorted(scored, key=lambda r: (sign * r["metrics"][metric], -r["step"]), reverse=True)[:n]
    return sorted(chosen, key=lambda r: r["step"])


def choose(work_dir: str, last=None, best=None, metric=None, mode=None, every=False):
    """Checkpoints of `work_dir` for averaging: (paths, {path: metric value}, rows for the report). `every`
    (greedy soups) takes all checkpoints when neither --last nor --best is given."""
    from ckpttool.report.progress import warn

    info = scan(work_dir, modes={metric: mode} if metric and mode else None)
    for w in info["warnings"]:
        warn(w)
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


def best_checkpoint(info: dict, metric: str) -> str:
    """`ckpt runs DIR --best METRIC --path`: the file holding the best weights for METRIC in the current run."""
    if metric not in info["metrics"]:
        raise CkptError(f"metric {metric!r} not logged in {info['work_dir']} "
                        f"(metrics: {', '.join(info['metrics']) or 'none'})")
    best = info["metrics"][metric]["best"]
    if not best or not best.get("path"):
        raise CkptError(f"no checkpoint of {info['unit']} {best['step'] if best else '?'} (the best {metric}) is left "
                        f"in {info['work_dir']}")
    row = next((c for c in info.get("checkpoints", []) if c.get("path") == best["path"]), {})
    if row.get("safety") == "code":
        raise CkptError(f"{best['path']}: {row.get('safety_summary', 'its pickle would run code')}")
    return best["path"]


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()
