"""`graft`: load a checkpoint into a changed architecture, by explicit rules, with a verified report.

load (sources, target) → plan (rules.make_plan: names and shapes only) → apply (values; reads only the source
tensors the plan uses) → verify (strict load into the target; loaded tensors bit-identical to their source) →
write (`ckpttool.io.write.save`, atomic, verified before the rename).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from ckpttool.errors import CkptError
from ckpttool.io.hashing import digest
from ckpttool.report.output import human_count
from ckpttool.report.progress import log
from ckpttool.report.result import Report
from ckpttool.summary.tree import default_depth, module_of
from ckpttool.surgery import rules as R

NOT_CARRIED = ("optimizer, param_schedulers and message_hub are not carried: a resumed optimizer would not match "
               "the new parameters — start training from this file with load_from, not resume")


@dataclass
class Source:
    prefix: str | None
    path: str
    ck: object
    sd: object


# --- load -----------------------------------------------------------------------------------------------------
def open_sources(source, section: str | None = None) -> list[Source]:
    """`path`, `{prefix: path}` or `[(prefix, path), ...]` → opened, safety-checked sources."""
    from ckpttool.io import load

    items = source.items() if isinstance(source, dict) else \
        [(None, source)] if isinstance(source, (str, os.PathLike)) else source
    out = []
    for prefix, path in items:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise CkptError(f"source not found: {path}")
        ck = load(path)
        ck.require_safe()
        out.append(Source(prefix or None, path, ck, ck.state_dict(section)))
    if not out:
        raise CkptError("no source checkpoint given")
    return out


def source_tensors(sources: list[Source]) -> OrderedDict:
    """All source tensors under their starting names (`PREFIX.key` for `--from PREFIX=FILE`)."""
    named, origin = OrderedDict(), {}
    for s in sources:
        head = s.prefix.rstrip(".") + "." if s.prefix else ""
        for key, t in s.sd.items():
            name = head + key
            if name in named:
                raise CkptError(f"{name!r} is in both {origin[name]} and {s.path}; give each --from its own PREFIX")
            named[name], origin[name] = t, s.path
    return named


# --- apply ----------------------------------------------------------------------------------------------------
def apply(plan: R.Plan, src: dict, target) -> OrderedDict:
    """The output values in target order: TensorRef for loaded tensors (read when written), torch otherwise."""
    values = OrderedDict()
    for e in plan.entries:
        values[e.key] = None if (e.init or "").startswith("copy:") else _value(e, src, target, None)
    for e in R.copy_order(plan.entries):
        values[e.key] = _value(e, src, target, _clone(values[e.init[5:]]))
    return values


def _value(e: R.Entry, src, target, base):
    if e.action == "copy":
        return src[e.source]
    if e.action == "inflate":
        return _inflate(src[e.source].to_torch(), e.shape[2])
    if base is None:
        base = _start(e, target)
    if e.action == "slice":
        return _slice_into(_as_torch(base).clone(), src[e.source].to_torch())
    return base


def _start(e: R.Entry, target):
    if e.init == "zeros":
        import torch

        return torch.zeros(e.shape, dtype=getattr(torch, e.dtype))
    return target.initial(e.key)


def _inflate(w, kt: int):
    """(O, I, kh, kw) → (O, I, kt, kh, kw): repeated over time and divided by kt (I3D inflation)."""
    return w.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt


def overlap(a: tuple, b: tuple) -> tuple:
    return tuple(slice(0, min(x, y)) for x, y in zip(a, b))


def _slice_into(base, w):
    block = overlap(tuple(base.shape), tuple(w.shape))
    base[block] = w[block].to(base.dtype)
    return base


def _as_torch(value):
    return value.to_torch() if hasattr(value, "to_torch") else value


def _clone(value):
    return value if hasattr(value, "to_torch") else value.clone()


# --- verify ---------------------------------------------------------------------------------------------------
def verify(sd, plan: R.Plan, src: dict, target) -> list[str]:
    """Prove `sd` (what was written, or the values in memory) loads strictly into the target and holds the source
    tensors unchanged. Raises CkptError("verification failed: …"); returns the checks that passed."""
    try:
        target.check_strict(sd)
    except CkptError as exc:
        raise CkptError(f"verification failed: the result does not load strictly into the target: {exc}") from None
    for e in plan.entries:
        if e.action == "copy" and not _same_bits(sd[e.key], src[e.source]):
            raise CkptError(f"verification failed: {e.key} differs from its source {e.source}")
        if e.action == "slice" and not _block_matches(sd[e.key], src[e.source]):
            raise CkptError(f"verification failed: {e.key} does not hold the overlapping block of {e.source}")
        if e.action == "inflate" and not _inflation_matches(sd[e.key], src[e.source]):
            raise CkptError(f"verification failed: {e.key} summed over time is not {e.source}")
    return ["loads with strict=True into the target", "every loaded tensor is bit-identical to its source"]


def _raw(value):
    import numpy as np

    arr = value.raw() if hasattr(value, "raw") else _torch_raw(value)
    return np.ascontiguousarray(arr)


def _torch_raw(t):
    from ckpttool.io.tensor import _torch_raw as raw

    return raw(t)


def _same_bits(a, b) -> bool:
    x, y = _raw(a), _raw(b)
    return x.shape == y.shape and x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _block_matches(out, source) -> bool:
    import torch

    o, s = _as_torch(out), _as_torch(source)
    block = overlap(tuple(o.shape), tuple(s.shape))
    return bool(torch.equal(o[block], s[block].to(o.dtype)))


def _inflation_matches(out, source) -> bool:
    import torch

    o, s = _as_torch(out), _as_torch(source)
    return tuple(o.shape[:2] + o.shape[3:]) == tuple(s.shape) and bool(
        torch.allclose(o.double().sum(2), s.double(), rtol=1e-5, atol=1e-6))


# --- report ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GraftReport(Report):
    """What `graft` / `run` did; `to_dict()` is the `ckpt graft --format json` object (keys: docs/graft.md)."""

    source: list                   # per source: prefix, path, sha256, format, layout, stripped_prefix, tensors, params
    target: dict                   # kind, spec, tensors, params
    loaded: dict                   # tensors, params, percent
    new: dict                      # tensors, params, modules, init (per kind), without_init_rule
    mismatched: list               # [{key, source, source_shape, target_shape, action, init}]
    unused: list                   # source tensors nothing loaded from
    depth: int
    modules: list
    rules: list                    # [{rule, value, text, matched}] in order
    on_shape_mismatch: str
    inflate: bool
    notes: list
    summary: str                   # the one-line result
    keys: list | None = None       # with keys=True: one row per target tensor
    dry_run: bool = False
    output: dict | None = None     # with out=…: path, tensors, bytes, verified; None when nothing was written
    failed: str | None = None      # a fail_on check that failed (nothing is applied then), or None
    verified: list | None = None   # without out (and not a dry run): the checks of the in-memory result


def build_report(plan: R.Plan, sources: list[Source], target, depth: int | None = None,
                 keys: bool = False, progress: bool | None = None) -> dict:
    entries = plan.entries
    depth = depth or default_depth([e.key for e in entries])
    total = sum(e.numel for e in entries)
    loaded = [e for e in entries if e.status == "loaded"]
    new = [e for e in entries if e.status == "new"]
    loaded_params = sum(e.numel for e in loaded)
    report = {
        "source": [_source_info(s, progress) for s in sources],
        "target": target.describe(),
        "loaded": {"tensors": len(loaded), "params": loaded_params,
                   "percent": 100.0 * loaded_params / total if total else 0.0},
        "new": {"tensors": len(new), "params": sum(e.numel for e in new), "modules": new_modules(entries, depth),
                "init": _count(e.init for e in new), "without_init_rule": sum(e.init_rule is None for e in new)},
        "mismatched": [_mismatch(e) for e in entries if e.status == "mismatched"],
        "unused": plan.unused,
        "depth": depth,
        "modules": module_rows(entries, depth),
        "rules": [{"rule": r.kind, "value": r.value, "text": r.text(), "matched": n}
                  for r, n in zip(plan.rules, plan.matched)],
        "on_shape_mismatch": plan.policy,
        "inflate": plan.inflate,
        "notes": list(plan.notes) + [NOT_CARRIED],
    }
    report["summary"] = summary_line(report, sources)
    if keys:
        report["keys"] = [_key_row(e) for e in entries]
    return report


def _source_info(s: Source, progress: bool | None = None) -> dict:
    return {"prefix": s.prefix, "path": s.path, "sha256": digest(s.path, progress), "format": s.ck.format,
            "layout": s.ck.layout.kind, "stripped_prefix": s.sd.stripped_prefix, "tensors": len(s.sd),
            "params": s.sd.total_params}


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        kind = "copy" if (v or "").startswith("copy:") else v
        out[kind] = out.get(kind, 0) + 1
    return out


def _mismatch(e: R.Entry) -> dict:
    return {"key": e.key, "source": e.source, "source_shape": list(e.source_shape), "target_shape": list(e.shape),
            "action": e.action, "init": e.init}


def _key_row(e: R.Entry) -> dict:
    return {"key": e.key, "shape": list(e.shape), "status": e.status, "action": e.action, "source": e.source,
            "init": e.init}


def new_modules(entries, depth: int) -> list[str]:
    """The new parts of the target: for each new key, its shortest module prefix (at least `depth` deep) whose
    keys are all new; the key itself when no such module exists."""
    status = {e.key: e.status for e in entries}
    all_new: dict[str, bool] = {}
    for key, st in status.items():
        parts = key.split(".")
        for i in range(1, len(parts)):
            p = ".".join(parts[:i])
            all_new[p] = all_new.get(p, True) and st == "new"
    out = []
    for key, st in status.items():
        if st != "new":
            continue
        parts = key.split(".")
        start = min(depth, len(parts) - 1)
        name = next((".".join(parts[:i]) for i in range(max(start, 1), len(parts)) if all_new[".".join(parts[:i])]),
                    key)
        if name not in out:
            out.append(name)
    return out


def module_rows(entries, depth: int) -> list[dict]:
    rows: OrderedDict[str, dict] = OrderedDict()
    for e in entries:
        name = module_of(e.key, depth)
        row = rows.setdefault(name, {"name": name, "tensors": 0, "params": 0, "loaded": 0, "new": 0,
                                     "mismatched": 0, "init": {}, "actions": {}, "sources": []})
        row["tensors"] += 1
        row["params"] += e.numel
        row[e.status] += 1
        if e.status == "new":
            kind = "copy" if e.init.startswith("copy:") else e.init
            row["init"][kind] = row["init"].get(kind, 0) + 1
        if e.status == "mismatched":
            row["actions"][e.action] = row["actions"].get(e.action, 0) + 1
        if e.source is not None:
            row["sources"].append(e.source)
    for row in rows.values():
        row["from"] = common_prefix(row.pop("sources"))
    return list(rows.values())


def common_prefix(names: list[str]) -> str | None:
    """The longest dotted prefix shared by `names` (which source module fed a target module)."""
    if not names:
        return None
    parts = names[0].split(".")[:-1]
    for n in names[1:]:
        other = n.split(".")
        i = 0
        while i < len(parts) and i < len(other) - 1 and parts[i] == other[i]:
            i += 1
        parts = parts[:i]
    return ".".join(parts) or "(root)"


def summary_line(r: dict, sources: list[Source]) -> str:
    names = ", ".join(os.path.basename(s.path) for s in sources)
    text = f"{human_count(r['loaded']['params'])} params loaded from {names} ({r['loaded']['percent']:.1f}%)"
    text += f", {human_count(r['new']['params'])} new"
    if r["new"]["modules"]:
        shown = r["new"]["modules"][:6]
        text += ": " + ", ".join(shown) + (f" (+{len(r['new']['modules']) - 6} more)" if len(r['new']['modules']) > 6
                                           else "")
    if r["mismatched"]:
        text += f"; {len(r['mismatched'])} shape-mismatched"
    if r["unused"]:
        text += f"; {len(r['unused'])} source tensors unused"
    return text


# --- write ----------------------------------------------------------------------------------------------------
def output_meta(sources: list[Source], report: dict) -> dict:
    meta = dict(sources[0].ck.meta)
    meta["graft"] = {"sources": [{"prefix": s["prefix"], "path": os.path.abspath(s["path"]), "sha256": s["sha256"]}
                                 for s in report["source"]],
                     "rules": [r["text"] for r in report["rules"]],
                     "report": {k: v for k, v in report.items() if k != "keys"}}
    return meta


def write(out: str, values: OrderedDict, meta: dict, plan: R.Plan, src: dict, target, inputs, force=False,
          progress: bool | None = None) -> dict:
    from ckpttool.io import load
    from ckpttool.io.write import save

    checks: list[str] = []

    def verify_written(path):
        checks.extend(verify(load(path).state_dict(), plan, src, target))

    info = save(out, values, meta, inputs=inputs, force=force, verify_extra=verify_written, progress=progress)
    info["verified"] = ["every tensor reads back with the bytes written"] + checks
    return info


# --- the whole run --------------------------------------------------------------------------------------------
def run(source, target, rules=(), *, cfg_options=None, on_shape_mismatch=None, inflate=None, section=None,
        seed=0, depth=None, keys=False, out=None, force=False, dry_run=False, fail_on=(), progress=None,
        build="auto", project_root=None):
    """Everything `ckpt graft` does. Returns (values, GraftReport); values are lazy (TensorRef for loaded tensors),
    None when nothing was applied (dry run, or a `fail_on` check failed: then `report.failed` says why).
    `progress`: bars of the bytes read (hashing the sources), written and verified (ckpttool.report.progress)."""
    from ckpttool.io.write import check_output
    from ckpttool.surgery.target import resolve_target

    bad = [c for c in fail_on if c not in FAIL_ON]
    if bad:
        raise CkptError(f"--fail-on takes {','.join(FAIL_ON)}, got {bad[0]!r}")
    rule_list, options = R.collect_rules(rules)
    policy = on_shape_mismatch or options.get("on_shape_mismatch") or "skip"
    inflate = bool(options.get("inflate", False) if inflate is None else inflate)
    sources = open_sources(source, section)
    inputs = [s.path for s in sources] + ([os.fspath(target)] if isinstance(target, (str, os.PathLike)) else [])
    if out is not None and not dry_run:
        check_output(out, inputs, force)
    log(f"graft: building the target {target if isinstance(target, (str, os.PathLike)) else type(target).__name__}")
    tgt = resolve_target(target, cfg_options, seed, build=build, project_root=project_root)
    src = source_tensors(sources)
    plan = R.make_plan({k: (t.shape, t.dtype) for k, t in src.items()}, tgt.entries, rule_list, policy, inflate)
    report = build_report(plan, sources, tgt, depth, keys, progress)
    report.update(dry_run=bool(dry_run), output=None, failed=failures(report, fail_on))
    if dry_run or report["failed"]:
        return None, GraftReport.from_dict(report)
    if hasattr(tgt, "materialise"):  # a target built on meta: only what the plan initialises becomes real
        tgt.materialise([e.key for e in plan.entries if e.action not in ("copy", "inflate")])
        report["target"] = tgt.describe()
    report["notes"].extend(getattr(tgt, "notes", []))
    values = apply(plan, src, tgt)
    if out is None:
        report["verified"] = verify(values, plan, src, tgt)
    else:
        log(f"graft: writing and verifying {out}")
        report["output"] = write(out, values, output_meta(sources, report), plan, src, tgt, inputs, force, progress)
    return values, GraftReport.from_dict(report)


FAIL_ON = ("new", "mismatched", "unused")


def failures(report: dict, checks) -> str | None:
    """What `--fail-on` finds that no rule accounted for: new keys without an --init rule, mismatches that were
    skipped, unused source tensors that no --drop/--only removed."""
    found = {"new": report["new"]["without_init_rule"],
             "mismatched": sum(m["action"] == "skip" for m in report["mismatched"]),
             "unused": sum(not u["dropped"] for u in report["unused"])}
    hits = [f"{found[c]} {c}" for c in checks if found[c]]
    return ", ".join(hits) + " not covered by a rule (--fail-on)" if hits else None


def graft(source, target, rules=(), *, cfg_options=None, on_shape_mismatch=None, inflate=None, section=None,
          seed=0, depth=None, keys=False, out=None, force=False, progress=None, build="auto", project_root=None):
    """Graft `source` into `target`; returns (state_dict of torch tensors, GraftReport).

    source: a checkpoint path, or {prefix: path} for several. target: an mmengine config (.py, with
    `cfg_options`), `package.module:function`, a template checkpoint, or an nn.Module. rules: in order, as
    (kind, value) pairs or {kind: value} dicts (kinds: map, strip_prefix, add_prefix, copy, drop, only, init,
    rules=FILE). With `out`, the result is also written and verified there (torch zip, or .safetensors).
    `project_root`: a folder put on sys.path (with the current directory) for a config's `custom_imports` or a
    factory's module."""
    values, report = run(source, target, rules, cfg_options=cfg_options, on_shape_mismatch=on_shape_mismatch,
                         inflate=inflate, section=section, seed=seed, depth=depth, keys=keys, out=out, force=force,
                         progress=progress, build=build, project_root=project_root)
    return OrderedDict((k, _as_torch(v)) for k, v in values.items()), report
