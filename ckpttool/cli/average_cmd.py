"""ckpt average CKPT... -o OUT — weight averaging (uniform/weighted), work_dir selection, greedy soups."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import Command, MultiOption, examples, finish, output_options
from ckpttool.report.output import Cell, Table, human_bytes
from ckpttool.surgery.average import DTYPES, INT_RULES

if TYPE_CHECKING:
    from ckpttool.surgery.average import AverageReport


@click.command("average", cls=Command, epilog=examples(
    "ckpt average work_dirs/rgbpose/epoch_{22,23,24}.pth -o swa.pth",
    "ckpt average --work-dir work_dirs/rgbpose --best 3 --metric acc/RGBPose_1:1_top1 -o best3.pth "
    "--update-bn rgbpose.py",
    "ckpt average epoch_10.pth epoch_20.pth --section ema_state_dict --weights 1,2 -o ema.safetensors"))
@click.argument("checkpoints", nargs=-1, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Output (.pth torch zip, or .safetensors).")
@click.option("--weights", metavar="W1,W2,..", help="Weights per checkpoint (normalised to sum 1).")
@click.option("--section", metavar="NAME", help="Section to average (default: the weights; ema_state_dict…).")
@click.option("--int-buffers", type=click.Choice(INT_RULES), default="last", show_default=True,
              help="Integer/bool tensors are never averaged: take the last/first input's, the max, or fail "
                   "when they differ.")
@click.option("--dtype", type=click.Choice(DTYPES), default="keep", show_default=True,
              help="Output dtype of floating tensors.")
@click.option("--intersection", is_flag=True, help="Average the keys all inputs share; report the others.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--work-dir", type=click.Path(), help="Take the checkpoints from an mmengine work_dir.")
@click.option("--last", type=int, metavar="N", help="With --work-dir: the last N checkpoints.")
@click.option("--best", type=int, metavar="N", help="With --work-dir: the N best by --metric.")
@click.option("--metric", metavar="NAME", help="Metric for --best / --greedy (e.g. acc/top1; with --eval-cmd "
                                              "'ckpt eval … --format json' a key of its `metrics`, e.g. pose/top1).")
@click.option("--select-metric", metavar="NAME", help="With --work-dir: the logged metric that chooses --best "
                                                      "checkpoints when it differs from the --eval-cmd --metric.")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Better is max or min (default from the name).")
@click.option("--greedy", is_flag=True, help="Greedy soup: keep an ingredient only if --eval-cmd's metric "
                                            "does not get worse.")
@click.option("--eval-cmd", metavar="'CMD {ckpt}'", help="Prints a JSON object holding --metric.")
@click.option("--update-bn", metavar="CONFIG", type=click.Path(),
              help="Recompute BatchNorm statistics with the train_dataloader of this mmengine config.")
@click.option("--bn-batches", type=int, default=100, show_default=True, help="Batches for --update-bn.")
@click.option("--cfg-options", cls=MultiOption, metavar="K=V", help="Override entries of the --update-bn config.")
@click.option("--device", metavar="cpu|cuda[:N]",
              help="Where --update-bn runs the model (default: cuda when torch sees a GPU, else cpu).")
@output_options
def average_cmd(checkpoints, out, weights, section, int_buffers, dtype, intersection, force, work_dir, last, best,
                metric, select_metric, mode, greedy, eval_cmd, update_bn, bn_batches, cfg_options, device, fmt):
    """Average the weights of CHECKPOINTS (or of checkpoints chosen from --work-dir) into OUT.

    Floating tensors are averaged in float64 and written in their dtype; integer buffers follow --int-buffers.
    Streams one tensor at a time; the output is written atomically and verified by re-reading it."""
    from ckpttool.report.progress import warn
    from ckpttool.surgery.average_job import run_average

    report = run_average(checkpoints, out, work_dir=work_dir, last=last, best=best, metric=metric, mode=mode,
                         select_metric=select_metric,
                         weights=weights, greedy=greedy, eval_cmd=eval_cmd, update_bn=update_bn,
                         bn_batches=bn_batches, cfg_options=cfg_options, force=force, device=device, section=section,
                         int_buffers=int_buffers, dtype=dtype, intersection=intersection)
    for w in report.warnings:
        warn(w)
    finish(report.to_dict(), tables(report), fmt)


def _metric_cells(name: str, values):
    """Whether the logged metric `name` is a fraction shown in %, and its cell maker (the runs room's; imported
    only for tables that show logged metrics: greedy soups, --work-dir)."""
    from ckpttool.cli.runs_cmd import value
    from ckpttool.workdirs.runs import is_percent

    pct = is_percent(name, values)
    return pct, lambda v: value(v, pct)


def tables(r: AverageReport) -> list[Table]:
    out = []
    if r.steps:
        name = r.metric
        pct, cell = _metric_cells(name, [v for s in r.steps for v in (s["metric"], s["soup_metric"])])
        rows = [[os.path.basename(s["candidate"]), cell(s["metric"]), cell(s["soup_metric"]),
                 "kept" if s["kept"] else "dropped"] for s in r.steps]
        unit = " (%)" if pct else ""
        out.append(Table(["candidate", name + unit, f"soup {name}{unit}", "step"], rows,
                         title=f"Greedy soup ({r.mode} {name}): {len(r.ingredients)} of {len(r.steps)} kept"))
    rows = [[os.path.basename(i["path"]), i.get("epoch", "-"), i.get("iter", "-"), Cell(i["weight"], "{:.4f}".format),
             Cell(i.get("sha256"), lambda h: (h or "-")[:12])] for i in r.inputs]
    heads = ["input", "epoch", "iter", "weight", "sha256"]
    logged = {os.path.basename(s["checkpoint"]): s["metric"] for s in r.selected or []}
    if any(v is not None for v in logged.values()):
        pct, cell = _metric_cells(r.metric, list(logged.values()))
        heads.append(f"{r.metric} (logged{', %' if pct else ''})")
        for row in rows:
            row.append(cell(logged.get(row[0])))
    out.append(Table(heads, rows, primary=True,
                     title=f"{r.method} average of {len(rows)} checkpoint(s) ({r.section})"))
    info = [["output", r.output], ["size", Cell(r.bytes, human_bytes)],
            ["tensors", f"{r.tensors} ({r.averaged} averaged, {r.picked} integer taken by "
                        f"'{r.int_buffers}')"], ["dtype", r.dtype]]
    if r.skipped:
        info.append(["left out", f"{len(r.skipped)} key(s): "
                     + ", ".join(f"{s['key']} ({s['reason']})" for s in r.skipped[:5])])
    if r.stripped_prefixes:
        info.append(["prefix stripped", ", ".join(r.stripped_prefixes)])
    out.append(Table(["", ""], info, notes=[f"note: {n}" for n in r.notes]))
    return out
