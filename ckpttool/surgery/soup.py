"""Greedy soup (Wortsman et al., 2022): add models best-first, keep one only if the soup's held-out metric does
not get worse. The metric comes from `eval_cmd`, any shell command that prints a JSON object holding it;
`{ckpt}` in the command is replaced by the (quoted) path of the candidate."""
from __future__ import annotations

import json
import os
import shlex
import subprocess

from ckpttool.errors import CkptError
from ckpttool.report.progress import log
from ckpttool.surgery.average import AverageReport, average


def run_eval(cmd: str, path: str, metric: str) -> float:
    """Run `cmd` on `path` and return `metric` from the JSON object it prints (the last one on stdout)."""
    proc = subprocess.run(cmd.replace("{ckpt}", shlex.quote(path)), shell=True, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CkptError(f"--eval-cmd exited with {proc.returncode} on {os.path.basename(path)}: {tail}")
    obj = _last_json(proc.stdout)
    if obj is None:
        raise CkptError(f"--eval-cmd printed no JSON object for {os.path.basename(path)}")
    value = _lookup(obj, metric)
    if value is None:
        raise CkptError(f"--eval-cmd output has no numeric {metric!r} (keys: {', '.join(map(str, obj))})")
    return value


def _last_json(text: str):
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        pass
    from ckpttool.plain import json_objects

    lines = (line for line in reversed(text.strip().splitlines()) if line.strip().startswith("{"))
    return next(json_objects(lines), None)


def _lookup(obj: dict, metric: str):
    """`metric` as a top-level key (`acc/top1`), a key of the flat `metrics` object `ckpt eval` prints
    (`pose/top1`), else a dotted path into nested objects (`metrics.top1`)."""
    value = obj.get(metric)
    if value is None and isinstance(obj.get("metrics"), dict):
        value = obj["metrics"].get(metric)
    if value is None and "." in metric:
        value = obj
        for part in metric.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def greedy_soup(candidates: list[str], out: str, eval_cmd: str, metric: str, mode: str = "max",
                known: dict | None = None, force: bool = False, **avg_kwargs) -> AverageReport:
    """Greedy soup of `candidates` (paths, in training order) into `out`; returns an AverageReport (`.steps`,
    `.ingredients`, `.soup_metric`). `known` maps path -> metric used for the ordering (e.g. from the work_dir
    logs); candidates without one are evaluated with `eval_cmd`."""
    from ckpttool.io.write import check_output, scratch_file

    if "{ckpt}" not in (eval_cmd or ""):
        raise CkptError("--greedy needs --eval-cmd 'COMMAND {ckpt}' (the placeholder is replaced by each path)")
    if mode not in ("max", "min"):
        raise CkptError("--mode must be max or min")
    if not candidates:
        raise CkptError("no candidates for the soup")
    check_output(out, candidates, force)
    sign = 1.0 if mode == "max" else -1.0
    scores, evaluated = {}, {}
    for p in candidates:
        if known and known.get(p) is not None:
            scores[p] = float(known[p])
        else:
            scores[p] = evaluated[p] = run_eval(eval_cmd, p, metric)
            log(f"soup: {os.path.basename(p)}: {metric} {scores[p]:.6g}")
    order = sorted(candidates, key=lambda p: -sign * scores[p])     # stable: ties keep training order
    first = order[0]
    soup_metric = evaluated[first] if first in evaluated else run_eval(eval_cmd, first, metric)
    kept = [first]
    steps = [{"candidate": first, "metric": scores[first], "soup_metric": soup_metric, "kept": True}]
    suffix = ".safetensors" if out.endswith(".safetensors") else ".pth"
    for i, p in enumerate(order[1:], 1):
        members = [c for c in candidates if c in kept or c == p]
        with scratch_file(out, suffix) as trial:   # removed after the evaluation, on errors and on SIGTERM
            average(members, trial, hash_inputs=False, **avg_kwargs)
            value = run_eval(eval_cmd, trial, metric)
        keep = sign * (value - soup_metric) >= 0
        steps.append({"candidate": p, "metric": scores[p], "soup_metric": value, "kept": keep})
        log(f"soup: + {os.path.basename(p)}: {metric} {value:.6g} ({'kept' if keep else 'dropped'})")
        if keep:
            kept.append(p)
            soup_metric = value
    ingredients = [c for c in candidates if c in kept]
    extra = {"greedy": {"metric": metric, "mode": mode, "eval_cmd": eval_cmd, "soup_metric": soup_metric,
                        "steps": [dict(s, candidate=os.path.abspath(s["candidate"])) for s in steps]}}
    result = average(ingredients, out, method="greedy-soup", extra_meta=extra, force=force, **avg_kwargs)
    return result.updated(metric=metric, mode=mode, soup_metric=soup_metric, steps=steps, ingredients=ingredients)
