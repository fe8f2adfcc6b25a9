"""ckpt average CKPT... -o OUT — weight averaging (uniform/weighted), work_dir selection, greedy soups."""
from __future__ import annotations

import os

import click

from ckpttool.cli.common import MultiOption, finish, output_options
from ckpttool.cli.runs_cmd import value
from ckpttool.report.output import Table, human_bytes
from ckpttool.surgery.average import DTYPES, INT_RULES
from ckpttool.workdirs.runs import is_percent


@click.command("average")
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
@output_options
def average_cmd(checkpoints, out, weights, section, int_buffers, dtype, intersection, force, work_dir, last, best,
                metric, select_metric, mode, greedy, eval_cmd, update_bn, bn_batches, cfg_options, fmt):
    """Average the weights of CHECKPOINTS (or of checkpoints chosen from --work-dir) into OUT.

    Floating tensors are averaged in float64 and written in their dtype; integer buffers follow --int-buffers.
    Streams one tensor at a time; the output is written atomically and verified by re-reading it."""
    from ckpttool.errors import CkptError
    from ckpttool.report.progress import warn
    from ckpttool.workdirs.runs import choose

    paths, known, selected = list(checkpoints), None, None
    if work_dir:
        if paths:
            raise CkptError("give checkpoints or --work-dir, not both")
        chooser = select_metric or metric
        paths, known, selected = choose(work_dir, last=last, best=best, metric=chooser, mode=mode, every=greedy)
        if chooser != metric:
            known = None   # logged values of another metric: the soup evaluates its own
    elif last is not None or best is not None:
        raise CkptError("--last/--best choose checkpoints from --work-dir DIR")
    if not paths:
        raise CkptError("give checkpoints to average, or --work-dir DIR with --last N / --best N --metric NAME")
    common = dict(section=section, int_buffers=int_buffers, dtype=dtype, intersection=intersection)
    final = out
    if update_bn:  # average into a hidden file next to OUT, recalibrate it, then rename: OUT appears only when done
        from ckpttool.integrations.openmmlab import load_config
        from ckpttool.io.write import check_output

        final = check_output(out, paths, force)
        load_config(update_bn, cfg_options)  # a bad config fails before any work
        out, force = _hidden(final), False
    try:
        result = _run(paths, out, weights, greedy, metric, mode, eval_cmd, known, force, common)
        if update_bn:
            from ckpttool.surgery.average import update_bn as recalibrate

            result["update_bn"] = recalibrate(out, update_bn, bn_batches, cfg_options)
            os.replace(out, final)
            result.update(output=final, bn_stale=False)
            result["notes"] = [n for n in result["notes"] if "BatchNorm" not in n]
            result["notes"].append(f"BatchNorm statistics recalibrated on {result['update_bn']['batches']} "
                                   "batch(es) of the config's train_dataloader")
    finally:
        if final != out and os.path.exists(out):
            os.unlink(out)
    if selected is not None:
        result["selected"] = selected
        result.setdefault("metric", metric)
    for w in result["warnings"]:
        warn(w)
    finish(result, tables(result), fmt)


def _hidden(path: str) -> str:
    import secrets

    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp"
                        + (".safetensors" if path.endswith(".safetensors") else ""))


def _run(paths, out, weights, greedy, metric, mode, eval_cmd, known, force, common) -> dict:
    from ckpttool.errors import CkptError
    from ckpttool.workdirs import runs
    from ckpttool.surgery.average import average

    if greedy:
        from ckpttool.surgery.soup import greedy_soup

        if weights:
            raise CkptError("--weights cannot be combined with --greedy")
        if not metric:
            raise CkptError("--greedy needs --metric NAME")
        return greedy_soup(paths, out, eval_cmd, metric, mode or runs.metric_mode(metric), known=known,
                           force=force, **common)
    if eval_cmd:
        raise CkptError("--eval-cmd is used by --greedy")
    return average(paths, out, weights=weights, force=force, **common)


def tables(r: dict) -> list[Table]:
    out = []
    if r.get("steps"):
        name = r["metric"]
        pct = is_percent(name, [v for s in r["steps"] for v in (s["metric"], s["soup_metric"])])
        rows = [[os.path.basename(s["candidate"]), value(s["metric"], pct), value(s["soup_metric"], pct),
                 "kept" if s["kept"] else "dropped"] for s in r["steps"]]
        unit = " (%)" if pct else ""
        out.append(Table(["candidate", name + unit, f"soup {name}{unit}", "step"], rows,
                         title=f"Greedy soup ({r['mode']} {name}): {len(r['ingredients'])} of {len(r['steps'])} kept"))
    rows = [[os.path.basename(i["path"]), i.get("epoch", "-"), i.get("iter", "-"), f"{i['weight']:.4f}",
             (i.get("sha256") or "-")[:12]] for i in r["inputs"]]
    heads = ["input", "epoch", "iter", "weight", "sha256"]
    logged = {os.path.basename(s["checkpoint"]): s["metric"] for s in r.get("selected") or []}
    if any(v is not None for v in logged.values()):
        pct = is_percent(r["metric"], logged.values())
        heads.append(f"{r['metric']} (logged{', %' if pct else ''})")
        for row in rows:
            row.append(value(logged.get(row[0]), pct))
    out.append(Table(heads, rows, primary=True,
                     title=f"{r['method']} average of {len(rows)} checkpoint(s) ({r['section']})"))
    info = [["output", r["output"]], ["size", human_bytes(r["bytes"])],
            ["tensors", f"{r['tensors']} ({r['averaged']} averaged, {r['picked']} integer taken by "
                        f"'{r['int_buffers']}')"], ["dtype", r["dtype"]]]
    if r["skipped"]:
        info.append(["left out", f"{len(r['skipped'])} key(s): "
                     + ", ".join(f"{s['key']} ({s['reason']})" for s in r["skipped"][:5])])
    if r.get("stripped_prefixes"):
        info.append(["prefix stripped", ", ".join(r["stripped_prefixes"])])
    out.append(Table(["", ""], info, notes=[f"note: {n}" for n in r["notes"]]))
    return out
