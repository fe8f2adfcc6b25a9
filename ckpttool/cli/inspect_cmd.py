"""ckpt inspect PATH — what is in a checkpoint, without running code from it (and without importing torch)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import examples, finish, output_options
from ckpttool.report.output import Cell, Table, fmt_num, human_bytes, human_count

if TYPE_CHECKING:
    from ckpttool.summary.inspect import InspectReport


@click.command("inspect", epilog=examples(
    "ckpt inspect work_dirs/rgbpose_ntu60/epoch_24.pth --depth 3",
    "ckpt inspect best_acc_top1_epoch_20.pth --stats --check-finite --format json",
    "ckpt inspect work_dirs/rgbpose_ntu60            # a work_dir: its checkpoints and metrics"))
@click.argument("path", type=click.Path())
@click.option("--depth", type=click.IntRange(1, 32), help="Module tree depth (default: one that shows the parts).")
@click.option("--filter", "filter_", metavar="REGEX", help="Only keys matching REGEX.")
@click.option("--keys", is_flag=True, help="One row per tensor.")
@click.option("--config", is_flag=True, help="Print the training config embedded in meta.cfg.")
@click.option("--stats", is_flag=True, help="Read values: min/max/mean/std/L2, NaN and Inf per module.")
@click.option("--check-finite", is_flag=True, help="Exit 1 when any tensor holds NaN or Inf.")
@click.option("--section", metavar="NAME", help="Inspect another section as the weights (ema_state_dict, optimizer…).")
@click.option("--trust", is_flag=True, help="Unpickle for real. RUNS CODE FROM THE FILE: only for files you made.")
@output_options
def inspect_cmd(path, depth, filter_, keys, config, stats, check_finite, section, trust, fmt):
    """Show what PATH holds: layout, meta, module tree, optimizer, schedulers, logged scalars, EMA, and every
    global the file references. PATH may be a .pth/.ckpt (zip or legacy), .safetensors, a sharded index or a
    torch.distributed.checkpoint folder; the format is detected from the content."""
    import os

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, ".metadata")) \
            and not any(n.endswith(".index.json") for n in os.listdir(path)):
        from ckpttool.cli.runs_cmd import show  # an mmengine work_dir: list its runs

        return show(path, fmt)
    from ckpttool.report.progress import warn
    from ckpttool.summary.inspect import inspect

    report = inspect(path, depth=depth, filter=filter_, keys=keys, config=config, stats=stats,
                     check_finite=check_finite, section=section, trust=trust)
    if report.verdict in ("code", "not verified"):
        warn(f"{path}: {report.safety['summary']} (nothing was executed)")
    finish(report.to_dict(), tables(report, stats), fmt, report.failed)


def tables(r: InspectReport, stats: bool) -> list[Table]:
    out = [Table(["", ""], header_rows(r), title=None)]
    cols = ["module", "tensors", "params", "bytes", "dtypes"]
    if stats:
        cols += ["min", "max", "mean", "std", "l2", "nan", "inf", "flags"]
    rows = []
    for m in r.modules:
        row = [m["name"], m["tensors"], Cell(m["params"], human_count), Cell(m["bytes"], human_bytes),
               ",".join(m["dtypes"])]
        if stats:
            row += [Cell(m.get(k), fmt_num) for k in ("min", "max", "mean", "std", "l2")]
            row += [m.get("nan", 0), m.get("inf", 0), "; ".join(m.get("flags", []))]
        rows.append(row)
    total = ["total", r.num_tensors, Cell(r.total_params, human_count), Cell(r.total_bytes, human_bytes), ""]
    rows.append(total + [""] * (len(cols) - len(total)))
    out.append(Table(cols, rows, title=f"Modules (depth {r.depth}) of {r.weights_key or 'the file'}",
                     primary=True))
    if r.keys is not None:
        kcols = ["key", "shape", "dtype", "params"] + (["min", "max", "mean", "std", "nan", "inf"] if stats else [])
        krows = [[k["key"], "x".join(map(str, k["shape"])) or "scalar", k["dtype"], k["params"]]
                 + ([Cell(k.get(c), fmt_num) for c in ("min", "max", "mean", "std")] + [k["nan"], k["inf"]]
                    if stats else []) for k in r.keys]
        out.append(Table(kcols, krows, title="Tensors"))
    opt = r.optimizer
    if opt:
        gcols = ["groups", "params", "lr (next epoch)", "weight_decay", "momentum/betas", "parameters"]
        grows = [[_span(g["groups"]), g["params"], Cell(g.get("lr"), fmt_num), Cell(g.get("weight_decay"), fmt_num),
                  Cell(g.get("momentum"), fmt_num) if "momentum" in g else g.get("betas", "-"),
                  _names(g.get("names"))]
                 for g in opt.get("group_sets") or []]
        lr_now = (r.scalars or {}).get("train/lr")
        out.append(Table(gcols, grows, title=f"Optimizer: {opt['kind']} ({len(opt['param_groups'])} param groups, "
                                              f"{opt['state_tensors']} state tensors, "
                                              f"{human_bytes(opt['state_bytes'])})",
                         notes=["lr (next epoch): stored after the end-of-epoch scheduler step"
                                + (f"; lr in effect during the saved epoch (message_hub train/lr): {fmt_num(lr_now, 6)}"
                                   if lr_now is not None else "")]))
    if r.schedulers:
        srows = [[s["kind"], ", ".join(f"{k}={v}" for k, v in s.items() if k != "kind")] for s in r.schedulers]
        out.append(Table(["scheduler", "state"], srows, title="Schedulers"))
    if r.scalars:
        out.append(Table(["scalar", "last value"], [[k, Cell(v, lambda x: fmt_num(x, 6))] for k, v in r.scalars.items()],
                         title="Last logged scalars (message_hub)"))
    if r.config:
        out.append(Table([], [], title="Config (meta.cfg)", notes=[r.config.rstrip()]))
    return out


def _span(ids: list[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{len(ids)} groups ({ids[0]}-{ids[-1]})" \
        if ids == list(range(ids[0], ids[-1] + 1)) else f"{len(ids)} groups"


def _names(names) -> str:
    if not names:
        return "-"
    return ", ".join(names[:2]) + (f" … (+{len(names) - 2})" if len(names) > 2 else "")


def header_rows(r: InspectReport) -> list[list]:
    meta = r.meta
    rows = [["path", r.path], ["format", r.format], ["size", Cell(r.file_bytes, human_bytes)],
            ["layout", r.layout]]
    if "epoch" in meta or "iter" in meta:
        rows.append(["epoch / iter", f"{meta.get('epoch', '-')} / {meta.get('iter', meta.get('global_step', '-'))}"])
    for key, label in (("mmengine_version", "mmengine"), ("mmcv_version", "mmcv"), ("experiment_name", "experiment"),
                       ("seed", "seed"), ("arch", "arch"), ("pytorch-lightning_version", "lightning"),
                       ("time", "saved")):
        if meta.get(key) not in (None, ""):
            rows.append([label, meta[key]])
    weights = r.weights_key or "(root)"
    if r.stripped_prefix:
        weights += f" (prefix {r.stripped_prefix!r} stripped)"
    rows.append(["weights", f"{weights}: {r.num_tensors} tensors, {human_count(r.total_params)} params"])
    secs = [f"{k} ({human_bytes(v['bytes'])})" if "bytes" in v else k for k, v in r.sections.items()]
    if secs:
        rows.append(["sections", ", ".join(secs)])
    if r.ema:
        e = r.ema
        rows.append(["EMA", f"{e['section']}" + (f", steps={e['steps']}" if e.get("steps") is not None else "")
                     + (f" — {e['note']}" if e.get("note") else "")])
    rows.append(["security", security_line(r)])
    rows.extend(["note", n] for n in r.notes)
    return rows


def security_line(r: InspectReport) -> str:
    if r.trusted:
        return "--trust: the file was unpickled for real (any code in it ran); globals were not checked"
    return r.safety["summary"]
