"""ckpt runs DIR — the checkpoints of an mmengine (or timm) work_dir with the validation metrics logged for them,
the lr / loss / grad_norm of each epoch, collapses and what explains them."""
from __future__ import annotations

import click

from ckpttool.cli.common import Command, MultiOption, examples, finish, output_options
from ckpttool.report.output import Cell, Table, fmt_num, human_bytes
from ckpttool.report.streams import stream_label, stream_of
from ckpttool.workdirs.explain import ExplainReport
from ckpttool.workdirs.runs import DEFAULT_COLLAPSE, MIN_POINTS, RunsReport


@click.command("runs", cls=Command, epilog=examples(
    "ckpt runs work_dirs/rgbpose_ntu60",
    "ckpt runs work_dirs/rgbpose_ntu60 --metric acc/top1 --fail-on-collapse",
    "ckpt runs work_dirs/posec3d --collapse-drop 0.1 --format csv > runs.csv"))
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
         min_points=collapse_min_points / 100, best=best_metric, path_only=path_only, explain=explain, depth=depth,
         plot=plot)


def show(work_dir, fmt, path_only=False, explain=False, plot=None, **options):
    """`list_runs` and print its report (also used by `ckpt inspect DIR`); `path_only`: just the best file."""
    from ckpttool.workdirs.listing import list_runs

    report = list_runs(work_dir, explain=explain and not path_only, plot=None if path_only else plot, **options)
    if path_only:
        from ckpttool.report.output import print_result

        print_result(report.best_path)
    elif explain:
        finish(report.to_dict(), explain_tables(report), fmt)
    else:
        finish(report.to_dict(), tables(report, report.shown), fmt, report.failed)


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


def tables(r: RunsReport, names: list[str] | None = None) -> list[Table]:
    names = list(r.metrics) if names is None else [n for n in names if n in r.metrics]
    grouped = bool(r.streams)
    train = [k for k in ("lr", "loss", "grad_norm") if any(k in row["train"] for row in r.rows)]
    multi_run = sum(1 for x in r.runs if x["current"]) > 1
    heads = ["epoch" if r.unit == "epoch" else "iter"] + ([] if grouped else ["iter"] if r.unit == "epoch"
                                                             else []) + ["checkpoint"]
    if not grouped:
        heads.append("size")
    if multi_run:
        heads.append("run")
    heads += [_head(n, r.metrics[n], grouped) for n in names]
    heads += [("grad" if k == "grad_norm" and grouped else k) for k in train] + ["flags"]
    rows = []
    for row in r.rows:
        flags = [] if grouped else [f"best {n}" for n in row["best"] if n in names]
        flags += [] if grouped else [f"collapse {n}" for n in row["collapse"] if n in names]
        flags += [f.replace("grad_norm", "grad") for f in row.get("flags", [])] if grouped else row.get("flags", [])
        flags += [f"also {b}" for b in row["best_files"]] if not grouped else []
        cells = [row["step"] if r.unit == "iter" else (row["epoch"] if row["epoch"] is not None else "-")]
        if not grouped and r.unit == "epoch":
            cells.append(row["iter"] if row["iter"] is not None else "-")
        cells.append(row["checkpoint"] or "-")
        if not grouped:
            cells.append(Cell(row["bytes"] or None, human_bytes))
        if multi_run:
            cells.append(_run_label(row["run"]))
        cells += [_marked(value(row["metrics"].get(n), r.metrics[n]["percent"]), _marks(row, n, grouped))
                  for n in names]
        cells += [Cell(row["train"].get(k), lambda x, d=3 if k != "lr" else 4: fmt_num(x, d)) for k in train]
        cells.append("; ".join(flags))
        rows.append(cells)
    notes = [f"metrics from {_sources(r.sources)}" if r.sources else "no validation metrics logged"]
    if grouped:
        notes.append("* best of the column, v collapse (worse by more than the threshold)")
    if train:
        notes.append("lr: in effect during the epoch (train/lr, group 0); loss, grad_norm: epoch means")
    for n in names:
        s = r.metrics[n]
        for c in s["collapses"]:
            notes.append(f"collapse: {n} {value(c['from'], s['percent'])} -> {value(c['to'], s['percent'])} "
                         f"({r.unit} {c['from_step']} -> {c['to_step']}, {100 * c['drop']:.0f}% worse)")
    notes += [f"warning: {w}" for w in r.warnings]
    out = [Table(heads, rows, title=f"Runs in {r.work_dir}", primary=True, notes=notes)]
    best = [[n, s["mode"], value(s["best"]["value"], s["percent"]) if s["best"] else "-",
             s["best"]["step"] if s["best"] else "-", (s["best"] or {}).get("checkpoint") or "-"]
            for n, s in r.metrics.items() if n in names]
    if best:
        out.append(Table(["metric", "mode", "best", r.unit, "checkpoint"], best, title="Best per metric"))
    if r.abandoned:
        arows = [[a["run"], a["step"], a.get("checkpoint") or "-"] for a in r.abandoned]
        out.append(Table(["run", r.unit, "checkpoint"], arows, title="Left out: evaluations/checkpoints of runs "
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


def explain_tables(x: ExplainReport) -> list[Table]:
    from ckpttool.cli.diff_cmd import module_table

    out = []
    for c in x.collapses:
        unit = x.unit
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
