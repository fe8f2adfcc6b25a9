"""ckpt runs DIR — the checkpoints of an mmengine work_dir with the validation metrics logged for them."""
from __future__ import annotations

import click

from ckpttool.cli.common import finish, output_options
from ckpttool.report.output import Cell, Table, fmt_num, human_bytes
from ckpttool.workdirs.runs import DEFAULT_COLLAPSE


@click.command("runs")
@click.argument("work_dir", type=click.Path())
@click.option("--metric", metavar="NAME", help="Show only this metric (and use --mode for it).")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Better is max or min (default from the name).")
@click.option("--collapse-drop", type=float, default=DEFAULT_COLLAPSE, show_default=True,
              help="Flag a collapse when a metric gets worse by more than this fraction of its previous value.")
@click.option("--fail-on-collapse", is_flag=True, help="Exit 1 when a collapse is found.")
@output_options
def runs_cmd(work_dir, metric, mode, collapse_drop, fail_on_collapse, fmt):
    """List the checkpoints of WORK_DIR (epoch, iter, size) with the validation metrics of their epoch (from
    */vis_data/scalars.json and *.log), mark the best per metric and detect collapses."""
    show(work_dir, fmt, metric=metric, mode=mode, collapse_drop=collapse_drop, fail_on_collapse=fail_on_collapse)


def show(work_dir, fmt, metric=None, mode=None, collapse_drop=DEFAULT_COLLAPSE, fail_on_collapse=False):
    """Scan and print (also used by `ckpt inspect DIR`)."""
    from ckpttool.errors import CkptError
    from ckpttool.workdirs.runs import scan

    result = scan(work_dir, collapse_drop=collapse_drop, modes={metric: mode} if metric and mode else None)
    if metric:
        if metric not in result["metrics"]:
            raise CkptError(f"metric {metric!r} not logged in {work_dir} "
                            f"(metrics: {', '.join(result['metrics']) or 'none'})")
        result["metrics"] = {metric: result["metrics"][metric]}
    if not result["rows"]:
        raise CkptError(f"{work_dir}: no checkpoints (epoch_N/iter_N) and no validation logs found")
    collapses = [dict(c, metric=m) for m, s in result["metrics"].items() for c in s["collapses"]]
    failed = None
    if fail_on_collapse and collapses:
        failed = f"{len(collapses)} collapse(s), first: {collapses[0]['metric']} at {result['unit']} " \
                 f"{collapses[0]['to_step']}"
    finish(result, tables(result), fmt, failed)


def value(v, percent: bool) -> Cell:
    """A logged metric; in % (x100) when ``percent``: shown with 2 decimals, raw (unrounded) in CSV."""
    if v is None:
        return Cell(None)
    if percent:
        return Cell(100 * v, "{:.2f}".format)
    return Cell(v, lambda x: f"{x:.2f}" if abs(x) >= 1 else fmt_num(x))


def tables(r: dict) -> list[Table]:
    names = list(r["metrics"])
    heads = ["epoch", "iter", "checkpoint", "size"] + [f"{n} (%)" if r["metrics"][n]["percent"] else n
                                                        for n in names] + ["flags"]
    rows = []
    for row in r["rows"]:
        flags = [f"best {n}" for n in row["best"] if n in names]
        flags += [f"collapse {n}" for n in row["collapse"] if n in names]
        rows.append([row["epoch"] if row["epoch"] is not None else "-", row["iter"] if row["iter"] is not None
                     else "-", row["checkpoint"] or "-", Cell(row["bytes"] or None, human_bytes)]
                    + [value(row["metrics"].get(n), r["metrics"][n]["percent"]) for n in names]
                    + ["; ".join(flags + [f"also {b}" for b in row["best_files"]])])
    notes = [f"metrics from {', '.join(r['sources'])}" if r["sources"] else "no validation metrics logged"]
    for n, s in r["metrics"].items():
        for c in s["collapses"]:
            notes.append(f"collapse: {n} {value(c['from'], s['percent'])} -> {value(c['to'], s['percent'])} "
                         f"({r['unit']} {c['from_step']} -> {c['to_step']}, {100 * c['drop']:.0f}% worse)")
    out = [Table(heads, rows, title=f"Runs in {r['work_dir']}", primary=True, notes=notes)]
    best = [[n, s["mode"], value(s["best"]["value"], s["percent"]) if s["best"] else "-",
             s["best"]["step"] if s["best"] else "-", (s["best"] or {}).get("checkpoint") or "-"]
            for n, s in r["metrics"].items()]
    if best:
        out.append(Table(["metric", "mode", "best", r["unit"], "checkpoint"], best, title="Best per metric"))
    return out
