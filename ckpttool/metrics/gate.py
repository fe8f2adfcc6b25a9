"""Regression gate: save an eval result as JSON, compare a later result with it.

``metrics(result) -> {key: value}`` flattens an ``ckpt eval`` result into named metrics:
``<row>.top1`` / ``.top5`` / ``.mean_class_accuracy`` (NTU; ``clips<k>.<row>.top1`` for the table at k views) and
``<method>.MR.<subset>`` / ``.recall.<subset>`` / ``.AP50.<subset>`` (KAIST, the headline protocol).
MR is better lower; everything else (accuracy, recall, AP) better higher.

``compare(current, baseline, tolerance, overrides)`` marks a metric ``regressed`` when it is worse than the
baseline by more than its tolerance (metric points). An override ``PATTERN=X`` applies to every metric whose key
equals PATTERN or ends with ``.PATTERN`` (``MR.night=1.0``; shell-style wildcards allowed); the longest match wins.
A baseline metric missing from the current result fails the gate too.
"""
from __future__ import annotations

import fnmatch
import json
import os

from ckpttool.errors import CkptError, FormatError

LOWER_IS_BETTER = ("MR",)


def metrics(result: dict) -> dict:
    out = {}
    if result.get("task") == "kaist":
        for m in result.get("methods", []):
            for metric in ("MR", "recall", "AP50"):
                for sub, v in (m.get(metric) or {}).items():
                    if v is not None:
                        out[f"{m['name']}.{metric}.{sub}"] = float(v)
        return out
    for prefix, rows in [("", result.get("rows", []))] + [
            (f"clips{c['k']}.", c["rows"]) for c in result.get("clips", [])]:
        for r in rows:
            for metric in ("top1", "top5", "mean_class_accuracy"):
                if r.get(metric) is not None:
                    out[f"{prefix}{r['name']}.{metric}"] = float(r[metric])
    return out


def flat_metrics(result: dict) -> dict:
    """The flat `metrics` object of `ckpt eval --format json`: `{"pose/top1": 93.3, "clips3/pose/top1": …,
    "MLPD/MR/all": …}` — what `ckpt average --greedy --metric pose/top1` and scripts address."""
    return {k.replace(".", "/"): v for k, v in metrics(result).items()}


def lower_is_better(key: str) -> bool:
    return any(f".{m}." in f".{key}" for m in LOWER_IS_BETTER)


def parse_tolerance(values) -> tuple:
    """['0.5', 'MR.night=1.0'] -> (0.5, {'MR.night': 1.0}). The plain number is the default (0 if absent)."""
    default, overrides = 0.0, {}
    for v in values or ():
        key, eq, num = str(v).rpartition("=")
        try:
            x = float(num)
        except ValueError:
            raise CkptError(f"--tolerance {v!r}: expected a number or METRIC=NUMBER") from None
        if x < 0:
            raise CkptError(f"--tolerance {v!r}: must not be negative")
        if eq:
            if not key:
                raise CkptError(f"--tolerance {v!r}: empty metric name")
            overrides[key] = x
        else:
            default = x
    return default, overrides


def matches(key: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key, "*." + pattern)


def tolerance_for(key: str, default: float, overrides: dict) -> float:
    best, best_len = default, -1
    for pattern, x in overrides.items():
        if matches(key, pattern) and len(pattern) > best_len:
            best, best_len = x, len(pattern)
    return best


def load_baseline(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise CkptError(f"{path}: cannot read the baseline: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{os.path.basename(path)}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or "task" not in data:
        raise FormatError(f"{os.path.basename(path)}: not a metrics file written by `ckpt eval --save-metrics`")
    return data


def compare(current: dict, baseline: dict, tolerance: float = 0.0, overrides: dict | None = None) -> dict:
    if current.get("task") != baseline.get("task"):
        raise CkptError(f"the baseline is a {baseline.get('task')!r} result, this run is {current.get('task')!r}")
    overrides = overrides or {}
    cur, base = metrics(current), metrics(baseline)
    unused = [p for p in overrides if not any(matches(k, p) for k in base)]
    if unused:
        raise CkptError(f"--tolerance {unused[0]}=...: no baseline metric matches {unused[0]!r}")
    checks = []
    for key, b in base.items():
        tol = tolerance_for(key, tolerance, overrides)
        lower = lower_is_better(key)
        if key not in cur:
            checks.append({"metric": key, "baseline": b, "current": None, "delta": None, "tolerance": tol,
                           "better": "lower" if lower else "higher", "status": "missing"})
            continue
        delta = cur[key] - b
        worse = delta if lower else -delta
        status = "regressed" if worse > tol + 1e-9 else ("improved" if worse < 0 else "ok")
        checks.append({"metric": key, "baseline": b, "current": cur[key], "delta": delta, "tolerance": tol,
                       "better": "lower" if lower else "higher", "status": status})
    failed = [c for c in checks if c["status"] in ("regressed", "missing")]
    rows_cur, rows_base = _rows(cur), _rows(base)
    return {"passed": not failed, "regressions": len(failed), "checks": checks,
            "new_metrics": sorted(set(cur) - set(base)),
            "unmatched_rows": [r for r in rows_base if r not in rows_cur],
            "rows": rows_cur}


def _rows(flat: dict) -> list[str]:
    """Row names of flattened metrics (`clips3.joint.top1` -> `clips3.joint`), in order."""
    out = []
    for key in flat:
        row = key.rsplit(".", 1)[0]
        if ".MR." in f".{key}" or ".recall." in f".{key}" or ".AP50." in f".{key}":
            row = key.split(".")[0]
        if row not in out:
            out.append(row)
    return out


def failure_line(gate: dict, baseline: str) -> str:
    """The one-line verdict, naming the baseline rows this run has no row for."""
    line = f"{gate['regressions']} metric(s) regressed against {baseline}"
    if gate.get("unmatched_rows"):
        line += (f"; no row named {', '.join(gate['unmatched_rows'][:4])} in this run (rows: "
                 f"{', '.join(gate['rows'][:6]) or 'none'}; name rows with --preds NAME=PATH)")
    return line


def summary_markdown(gate: dict, baseline_path: str = "") -> str:
    """A markdown block for $GITHUB_STEP_SUMMARY."""
    head = "PASSED" if gate["passed"] else f"FAILED ({gate['regressions']} regression(s))"
    lines = [f"### ckpt eval regression gate: {head}", ""]
    if baseline_path:
        lines += [f"Baseline: `{baseline_path}`", ""]
    lines += ["| metric | baseline | current | delta | tolerance | better | status |",
              "|---|---:|---:|---:|---:|---|---|"]
    for c in gate["checks"]:
        mark = {"regressed": "**regressed**", "missing": "**missing**"}.get(c["status"], c["status"])
        lines.append(f"| {c['metric']} | {_f(c['baseline'])} | {_f(c['current'])} | {_f(c['delta'], True)} "
                     f"| {c['tolerance']:g} | {c['better']} | {mark} |")
    return "\n".join(lines) + "\n"


def _f(x, signed=False):
    if x is None:
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def save_metrics(result: dict, path: str, inputs=(), force: bool = False) -> str:
    """Write the result JSON atomically (refusing to overwrite an input, or an existing file without force)."""
    from ckpttool.io.write import atomic_write
    from ckpttool.report.output import render_json

    data = (render_json(result) + "\n").encode("utf-8")

    def verify(readable):
        with open(readable, "rb") as f:
            if f.read() != data:
                raise CkptError(f"verification failed: {path} reads back different bytes")

    return atomic_write(path, lambda f: f.write(data), verify, inputs=inputs, force=force)
