"""ckpt runs DIR — the checkpoints of an mmengine (or timm) work_dir with the validation metrics logged for them,
the lr / loss / grad_norm of each epoch, collapses and what explains them."""
from __future__ import annotations

import fnmatch

import click

from ckpttool.cli.common import Command, MultiOption, finish, output_options
from ckpttool.report.output import Cell, Table, fmt_num, human_bytes
from ckpttool.workdirs.runs import DEFAULT_COLLAPSE, MIN_POINTS, stream_label, stream_of


@click.command("runs", cls=Command)
@click.argument("work_dir", type=click.Path())
@click.option("--metric", "metrics", cls=MultiOption, metavar="NAME|GLOB",
              help="Show these metrics (names or globs such as 'acc/*top1'; several values or repeated).")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Better is max or min (default from the name).")
@click.option("--collapse-drop", type=float, default=DEFAULT_COLLAPSE, show_default=True,
              help="Flag a collapse when a metric gets worse by more than this fraction of its previous value.")
@click.option("--collapse-min-points", type=float, default=100 * MIN_POINTS, show_default=True,
              help="…and, for accuracies, by at least this many points (a drop near chance level is noise).")
@click.option("--fail-on-collapse", is_flag=True, help="Exit 1 when a collapse is found.")
@click.option("--best", "best_metric", metavar="METRIC", help="The best checkpoint for METRIC (with --path: only "
                                                              "its path, for stage scripts).")
@click.option("--path", "path_only", is_flag=True, help="With --best: print just the file's path.")
@click.option("--explain", is_flag=True, help="For each collapse: streams that dropped, lr/loss/grad_norm around "
                                              "it, config and weight diff of the checkpoints on either side, and "
                                              "the checkpoint to restart from.")
@click.option("--depth", type=click.IntRange(1, 32), help="Module depth of --explain's weight diff.")
@click.option("--plot", "plot", metavar="FILE", type=click.Path(dir_okay=False),
              help="Draw validation curves per stream, lr on a second axis, collapses marked (png/svg).")
@output_options
def runs_cmd(work_dir, metrics, mode, collapse_drop, collapse_min_points, fail_on_collapse, best_metric, path_only,
             explain, depth, plot, fmt):
    """List the checkpoints of WORK_DIR (epoch, iter, size) with the validation metrics of their epoch (from
    */vis_data/scalars.json and *.log; timm's summary.csv), grouped per stream (RGB / Pose / fusion) for
    multi-stream models, with the lr in effect, the train loss and grad_norm of each epoch; mark the best per
    metric, collapses, loss spikes and NaN; follow last_checkpoint through resumed runs."""
    from ckpttool.errors import CkptError

    if path_only and not best_metric:
        raise CkptError("--path goes with --best METRIC")
    show(work_dir, fmt, metrics=metrics, mode=mode, collapse_drop=collapse_drop, fail_on_collapse=fail_on_collapse,
         min_points=collapse_min_points / 100, best_metric=best_metric, path_only=path_only, explain=explain,
         depth=depth, plot=plot)


def show(work_dir, fmt, metric=None, mode=None, collapse_drop=DEFAULT_COLLAPSE, fail_on_collapse=False,
         metrics=(), min_points=MIN_POINTS, best_metric=None, path_only=False, explain=False, depth=None, plot=None):
    """Scan and print (also used by `ckpt inspect DIR`)."""
    from ckpttool.errors import CkptError
    from ckpttool.workdirs.runs import best_checkpoint, scan

    patterns = list(metrics or ()) + ([metric] if metric else [])
    info = scan(work_dir, collapse_drop=collapse_drop, min_points=min_points)
    if not info["rows"]:
        raise CkptError(f"{work_dir}: no checkpoints (epoch_N/iter_N) and no validation logs found")
    chosen = select_metrics(info, patterns)
    from ckpttool.report.progress import warn

    for c in info.get("checkpoints", []):
        if c.get("safety") in ("code", "not verified"):
            warn(f"{c['path']}: {c['safety_summary']}")
    if mode:
        info = scan(work_dir, collapse_drop=collapse_drop, min_points=min_points, modes={n: mode for n in chosen})
    if best_metric:
        path = best_checkpoint(info, best_metric)
        if path_only:
            from ckpttool.report.output import print_result

            print_result(path)
            return
    if plot:
        from ckpttool.report.plots import runs_figure

        runs_figure(info, plot, chosen)
    if explain:
        from ckpttool.workdirs.explain import explain as explain_fn, require_events

        require_events(info)
        result = explain_fn(info, depth=depth)
        finish(result, explain_tables(result), fmt, None)
        return
    if patterns:
        info["metrics"] = {n: info["metrics"][n] for n in chosen}
    info["shown"] = chosen
    collapses = [dict(c, metric=m) for m, s in info["metrics"].items() for c in s["collapses"]]
    failed = None
    if fail_on_collapse and collapses:
        failed = f"{len(collapses)} collapse(s), first: {collapses[0]['metric']} at {info['unit']} " \
                 f"{collapses[0]['to_step']}"
    finish(info, tables(info, chosen), fmt, failed)


def select_metrics(info: dict, patterns) -> list[str]:
    """Names matching --metric values (exact names or globs), in the order given; the default set otherwise:
    every metric of a single-stream run, the top-1 of each stream (and the first fusion) of a multi-stream one."""
    from ckpttool.errors import CkptError

    names = list(info["metrics"])
    if patterns:
        out = []
        for p in patterns:
            hits = [p] if p in names else fnmatch.filter(names, p)
            if not hits:
                raise CkptError(f"metric {p!r} not logged in {info['work_dir']} (metrics: {', '.join(names) or 'none'})")
            out += [h for h in hits if h not in out]
        return out
    if not info["streams"]:
        return names
    plain, fusion = [], []
    for stream in sorted(info["streams"], key=_stream_order):
        kinds = info["streams"][stream]
        top = next((n for n in kinds if stream_of(n)[1] == "top1"), kinds[0])
        (fusion if stream.lower().startswith("rgbpose") else plain).append(top)
    return plain + fusion[:1]


def _stream_order(stream: str):
    low = stream.lower()
    return (low.startswith("rgbpose"), {"rgb": 0, "pose": 1}.get(low, 2), stream)


def value(v, percent: bool) -> Cell:
    """A logged metric; in % (x100) when ``percent``: shown with 2 decimals, raw (unrounded) in CSV."""
    if v is None:
        return Cell(None)
    if percent:
        return Cell(100 * v, "{:.2f}".format)
    return Cell(v, lambda x: f"{x:.2f}" if abs(x) >= 1 else fmt_num(x))


def _head(name: str, s: dict, grouped: bool) -> str:
    stream, kind = stream_of(name)
    unit = " (%)" if s["percent"] else ""
    if grouped and stream is not None:
        return f"{stream_label(stream)}\n{kind}{unit}"
    return name + unit


def _short(name: str, grouped: bool) -> str:
    stream, kind = stream_of(name)
    return stream_label(stream) + ("" if kind == "top1" else f" {kind}") if grouped and stream else name


def tables(r: dict, names: list[str] | None = None) -> list[Table]:
    names = list(r["metrics"]) if names is None else [n for n in names if n in r["metrics"]]
    grouped = bool(r.get("streams"))
    train = [k for k in ("lr", "loss", "grad_norm") if any(k in row["train"] for row in r["rows"])]
    multi_run = sum(1 for x in r.get("runs", []) if x["current"]) > 1
    heads = ["epoch" if r["unit"] == "epoch" else "iter"] + ([] if grouped else ["iter"] if r["unit"] == "epoch"
                                                             else []) + ["checkpoint"]
    if not grouped:
        heads.append("size")
    if multi_run:
        heads.append("run")
    heads += [_head(n, r["metrics"][n], grouped) for n in names]
    heads += [("grad" if k == "grad_norm" and grouped else k) for k in train] + ["flags"]
    rows = []
    for row in r["rows"]:
        flags = [] if grouped else [f"best {n}" for n in row["best"] if n in names]
        flags += [] if grouped else [f"collapse {n}" for n in row["collapse"] if n in names]
        flags += [f.replace("grad_norm", "grad") for f in row.get("flags", [])] if grouped else row.get("flags", [])
        flags += [f"also {b}" for b in row["best_files"]] if not grouped else []
        cells = [row["step"] if r["unit"] == "iter" else (row["epoch"] if row["epoch"] is not None else "-")]
        if not grouped and r["unit"] == "epoch":
            cells.append(row["iter"] if row["iter"] is not None else "-")
        cells.append(row["checkpoint"] or "-")
        if not grouped:
            cells.append(Cell(row["bytes"] or None, human_bytes))
        if multi_run:
            cells.append(_run_label(row["run"]))
        cells += [_marked(value(row["metrics"].get(n), r["metrics"][n]["percent"]), _marks(row, n, grouped))
                  for n in names]
        cells += [Cell(row["train"].get(k), lambda x, d=3 if k != "lr" else 4: fmt_num(x, d)) for k in train]
        cells.append("; ".join(flags))
        rows.append(cells)
    notes = [f"metrics from {_sources(r['sources'])}" if r["sources"] else "no validation metrics logged"]
    if grouped:
        notes.append("* best of the column, v collapse (worse by more than the threshold)")
    if train:
        notes.append("lr: in effect during the epoch (train/lr, group 0); loss, grad_norm: epoch means")
    for n in names:
        s = r["metrics"][n]
        for c in s["collapses"]:
            notes.append(f"collapse: {n} {value(c['from'], s['percent'])} -> {value(c['to'], s['percent'])} "
                         f"({r['unit']} {c['from_step']} -> {c['to_step']}, {100 * c['drop']:.0f}% worse)")
    notes += [f"warning: {w}" for w in r.get("warnings", [])]
    out = [Table(heads, rows, title=f"Runs in {r['work_dir']}", primary=True, notes=notes)]
    best = [[n, s["mode"], value(s["best"]["value"], s["percent"]) if s["best"] else "-",
             s["best"]["step"] if s["best"] else "-", (s["best"] or {}).get("checkpoint") or "-"]
            for n, s in r["metrics"].items() if n in names]
    if best:
        out.append(Table(["metric", "mode", "best", r["unit"], "checkpoint"], best, title="Best per metric"))
    if r.get("abandoned"):
        arows = [[a["run"], a["step"], a.get("checkpoint") or "-"] for a in r["abandoned"]]
        out.append(Table(["run", r["unit"], "checkpoint"], arows, title="Left out: evaluations/checkpoints of runs "
                                                                        "the current run does not continue"))
    return out


def _marked(cell: Cell, mark: str) -> Cell:
    """The same raw value (CSV), shown with its best/collapse mark."""
    return cell if not mark or cell.raw is None else Cell(cell.raw, lambda x, f=cell.fmt: f(x) + mark)


def _marks(row: dict, name: str, grouped: bool) -> str:
    if not grouped:
        return ""
    return ("*" if name in row["best"] else "") + ("v" if name in row["collapse"] else "")


def _run_label(name) -> str:
    """An experiment name without the `_<timestamp>` mmengine appends."""
    import re

    return "-" if not name else re.sub(r"_\d{8}_\d{6}$", "", name)


def _sources(sources: list[str]) -> str:
    """`20240302_101112/ (log, scalars.json)` per run folder."""
    import os

    by: dict[str, list[str]] = {}
    for s in sources:
        head, _, tail = s.partition(os.sep)
        by.setdefault(head if tail else "", []).append(os.path.basename(s) if not tail else
                                                      "scalars.json" if tail.endswith(".json") else "log")
    return ", ".join(f"{d}/ ({', '.join(v)})" if d else ", ".join(v) for d, v in by.items())


def explain_tables(x: dict) -> list[Table]:
    from ckpttool.cli.diff_cmd import module_table

    out = []
    for c in x["collapses"]:
        unit = x["unit"]
        drops = ", ".join(f"{stream_label(m['stream']) or m['metric']} {m['change']:+.1f}"
                          f"{' points' if m['percent'] else ''}" for m in c["streams"])
        head = [["what", f"{unit} {c['from_step']} -> {c['step']}: {drops}"]]
        if c["runs"][0] != c["runs"][1]:
            head.append(["runs", f"{c['runs'][0]} -> {c['runs'][1]} (restarted)"])
        if c["restart_from"]:
            rf = c["restart_from"]
            head.append(["restart from", f"{rf['path']} ({unit} {rf['step']}, {rf['metric']} "
                                         f"{value(rf['value'], rf['percent'])})"])
        out.append(Table(["", ""], head, title=f"Collapse at {unit} {c['step']}", notes=c.get("notes", [])))
        srows = [[m["metric"], value(m["from"], m["percent"]), value(m["to"], m["percent"]),
                  f"{m['change']:+.2f}"] for m in c["metrics"]]
        out.append(Table(["metric", f"{unit} {c['from_step']}", f"{unit} {c['step']}", "change"], srows,
                         title="Streams"))
        keys = [k for k in ("lr", "loss", "loss_max", "grad_norm", "grad_norm_max")
                if any(k in t for t in c["training"])]
        trows = [[t["step"], t["checkpoint"] or "-"] + [fmt_num(t.get(k), 4) for k in keys] + ["; ".join(t["flags"])]
                 for t in c["training"]]
        out.append(Table([unit, "checkpoint"] + keys + ["flags"], trows, title="Training around it",
                         notes=["lr: in effect during the epoch (message_hub train/lr)"]))
        w = c["weights"]
        if w:
            out.append(module_table(w["modules"], f"Weights {c['from_step']} -> {c['step']}: modules (depth "
                                                  f"{w['depth']}) by relative change of floating parameters"))
            if w["nonfinite_in_b"]:
                out.append(Table(["tensor", "NaN", "Inf"], [[n["key"], n["nan"], n["inf"]]
                                                            for n in w["nonfinite_in_b"]], title="NaN/Inf"))
        if c["config"]:
            crows = [[d["key"], _cfg(d["a"]), _cfg(d["b"])] for d in c["config"]]
            out.append(Table(["config key", f"{unit} {c['from_step']}", f"{unit} {c['step']}"], crows,
                             title="Config difference",
                             notes=["optimizer.param_groups: as stored at save time, i.e. the lr for the next epoch"]))
    return out


def _cfg(v) -> str:
    return fmt_num(v, 6) if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)
