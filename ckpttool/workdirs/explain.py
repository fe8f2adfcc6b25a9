"""`ckpt runs DIR --explain`: for each collapse, what happened — from the work_dir reader and `diff`, nothing else.

One entry per collapse event (`scan()["events"]`): which streams dropped and by how much, the lr / loss /
grad_norm of the epochs around it (the lr in effect during each epoch, from message_hub `train/lr`), the config
difference when the two sides come from different runs, the weight diff of the checkpoints on either side (modules
ranked by the relative change of their floating parameters, norm growth, NaN/Inf, integer counters apart) and the
checkpoint to restart from (the best of the main metric before the collapse).
"""
from __future__ import annotations

from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.report.result import Report
from ckpttool.report.streams import stream_of

AROUND = 1   # epochs shown before and after a collapse


def main_metric(info: dict) -> str | None:
    """The metric a restart is chosen by: the fusion (or single stream) top-1, else the first logged."""
    names = list(info["metrics"])
    for want in ("RGBPose_1:1", None):
        for n in names:
            stream, kind = stream_of(n)
            if stream == want and kind == "top1" or (want is None and n.endswith("top1")):
                return n
    return names[0] if names else None


@dataclass(frozen=True)
class ExplainReport(Report):
    """`ckpt runs --explain`; `to_dict()` is its `--format json` object (keys: docs/runs.md)."""

    work_dir: str
    unit: str
    metric: str | None             # the metric a restart is chosen by
    collapses: list                # per collapse: step, from_step, streams, metrics, training, weights, config, …
    warnings: list


def explain(info, depth: int | None = None, top: int = 8) -> ExplainReport:
    """The `--explain` report of a `scan()` result."""
    from ckpttool.comparison.diff import diff

    rows = {r["step"]: r for r in info["rows"]}
    steps = sorted(rows)
    metric = main_metric(info)
    out = []
    for ev in info["events"]:
        a, b = rows.get(ev["from_step"]), rows.get(ev["step"])
        i, j = steps.index(ev["from_step"]), steps.index(ev["step"])
        around = [{"step": s, "run": rows[s]["run"], "checkpoint": rows[s]["checkpoint"], **rows[s]["train"],
                   "flags": rows[s]["flags"]} for s in steps[max(0, i - AROUND): j + AROUND + 1]]
        entry = {"step": ev["step"], "from_step": ev["from_step"], "streams": _streams(ev), "metrics": ev["metrics"],
                 "training": around, "weights": None, "config": None, "restart_from": None,
                 "runs": [a["run"] if a else None, b["run"] if b else None]}
        if a and b and a["path"] and b["path"]:
            d = diff(a["path"], b["path"], depth=depth, config=True)
            entry["weights"] = {"a": a["path"], "b": b["path"], "depth": d.depth, "modules": d.modules[:top],
                                "modules_total": len(d.modules), "nonfinite_in_b": d.nonfinite_in_b,
                                "changed_tensors": d.changed_tensors[:top]}
            entry["config"] = list(d.config or [])
            entry["notes"] = d.notes
        else:
            entry["notes"] = [f"no checkpoint on {'both sides' if not (a and a['path']) and not (b and b['path']) else 'one side'}"
                              f" of {info['unit']} {ev['from_step']} -> {ev['step']}: no weight diff"]
        entry["restart_from"] = _restart(info, metric, ev["from_step"])
        out.append(entry)
    return ExplainReport.from_dict({"work_dir": info["work_dir"], "unit": info["unit"], "metric": metric,
                                    "collapses": out, "warnings": info["warnings"]})


def _streams(ev: dict) -> list[dict]:
    """Per stream the drop of its main kind (top1 where logged), largest first."""
    per: dict[str, dict] = {}
    for m in ev["metrics"]:
        key = m["stream"] or m["metric"]
        have = per.get(key)
        if have is None or (m["kind"] == "top1" and have["kind"] != "top1"):
            per[key] = m
    fusion = [m for m in per.values() if (m["stream"] or "").lower().startswith("rgbpose")]
    plain = [m for m in per.values() if m not in fusion]
    return sorted(plain, key=lambda m: m["change"]) + sorted(fusion, key=lambda m: m["change"])


def _restart(info: dict, metric: str | None, before: int) -> dict | None:
    if metric is None:
        return None
    s = info["metrics"][metric]
    sign = 1.0 if s["mode"] == "max" else -1.0
    best = None
    for r in info["rows"]:
        if r["step"] <= before and r["path"] and metric in r["metrics"]:
            if best is None or sign * r["metrics"][metric] > sign * best["metrics"][metric]:
                best = r
    if best is None:
        return None
    return {"step": best["step"], "checkpoint": best["checkpoint"], "path": best["path"], "metric": metric,
            "value": best["metrics"][metric], "percent": s["percent"]}


def require_events(info: dict) -> None:
    if not info["events"]:
        raise CkptError(f"no collapse found in {info['work_dir']} (threshold {info['collapse_drop']:g} of the "
                        f"previous value); nothing to explain")
