"""ckpt publish CHECKPOINT [-o OUT] — a release file: weights (EMA or raw) + meta, no training state, verified."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ckpttool.cli.common import Command, examples, finish, output_options
from ckpttool.report.output import Cell, Table, human_bytes, human_count

if TYPE_CHECKING:
    from ckpttool.surgery.publish import PublishReport


@click.command("publish", cls=Command, epilog=examples(
    "ckpt publish work_dirs/posec3d/best_acc_top1_epoch_24.pth      # -> best_acc_top1_epoch_24-1a2b3c4d.pth",
    "ckpt publish epoch_12.pth --raw --dtype fp16 -o release/",
    "ckpt publish model_best.pth.tar --ema -o model.safetensors"))
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--out", type=click.Path(),
              help="Output file (.pth torch zip, or .safetensors) or directory. Default: "
                   "<stem>-<sha256[:8]>.pth of the written file, in the current directory.")
@click.option("--ema", "weights", flag_value="ema", help="Publish the EMA weights (mmengine EMAHook, timm "
                                                         "state_dict_ema).")
@click.option("--raw", "weights", flag_value="raw", help="Publish the raw (non-EMA) training weights.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16"]), help="Cast floating tensors (integer buffers stay).")
@click.option("--dry-run", is_flag=True, help="Report what would be kept and dropped; write nothing.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@output_options
def publish_cmd(checkpoint, out, weights, dtype, dry_run, force, fmt):
    """Write CHECKPOINT's weights plus the meta downstream code needs (cfg, dataset_meta, versions, epoch/iter,
    the source's sha256) and nothing else: no optimizer, schedulers or message_hub.

    Default weights: what evaluation loads (mmengine EMAHook files: the EMA weights it swapped into
    state_dict; timm: state_dict). The file loads with torch.load(weights_only=True) and mmengine's
    load_checkpoint, and is re-read and verified before it gets its name."""
    from ckpttool.surgery.publish import publish

    report = publish(checkpoint, out, weights=weights or "default", dtype=dtype, force=force, dry_run=dry_run)
    finish(report.to_dict(), tables(report), fmt)


def tables(r: PublishReport) -> list[Table]:
    w, src, out = r.weights, r.source, r.output
    rows = [["source", f"{src['path']} ({src['layout']}, {human_bytes(src['bytes'])}, sha256 {src['sha256'][:12]})"],
            ["weights", f"{w['choice']} from {w['section']}: {w['tensors']} tensors, {human_count(w['params'])} params"
             + (f", cast to {r.cast['dtype']} ({r.cast['tensors']} tensors)" if r.cast else "")],
            ["meta", ", ".join(r.meta_keys) or "-"]]
    if out:
        ratio = r.size["ratio"]
        rows.append(["written", f"{out['path']} (sha256 {out['sha256'][:12]})"])
        rows.append(["size", f"{human_bytes(src['bytes'])} -> {human_bytes(out['bytes'])} ({100 * ratio:.1f}%)"])
        rows.append(["verified", "; ".join(r.verified)])
    else:
        rows.append(["written", "nothing (--dry-run)"])
    head = Table(["", ""], rows)
    dropped = Table(["dropped", "holds", "tensors", "bytes"],
                    [[d["section"], d["what"], d["tensors"], Cell(d["bytes"], human_bytes)] for d in r.dropped],
                    title="Not carried", primary=True)
    dropped.notes.extend(r.notes)
    return [head, dropped]
