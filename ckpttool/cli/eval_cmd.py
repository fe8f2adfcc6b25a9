"""ckpt eval — metric tables from prediction files (NTU60, KAIST), or from running a model; a CI regression gate."""
from __future__ import annotations

import click

from ckpttool.cli.common import Command, MultiOption, finish, output_options
from ckpttool.metrics.constants import AGGREGATES, SETUPS
from ckpttool.report.output import Table, pct, signed



@click.command("eval", cls=Command)
@click.argument("config", required=False)
@click.argument("checkpoint", required=False)
@click.option("--task", type=click.Choice(["ntu60", "kaist"]), help="What the --preds files hold.")
@click.option("--preds", cls=MultiOption, metavar="FILE [FILE ...]",
              help="Prediction files: mmaction2 --dump pickles / .npz score files (ntu60); txt, json or mmdet "
                   "pickles (kaist). Several files: one row each (ntu60: plus their ensemble).")
@click.option("--coefficients", cls=MultiOption, type=float, metavar="X [X ...]",
              help="ntu60 ensemble weights, one per --preds file (default 1 each).")
@click.option("--apply-softmax", is_flag=True, help="ntu60 ensemble: softmax each file's scores before summing.")
@click.option("--ann", type=click.Path(), help="Annotation file: KAIST json, or NTU60 pkl for the labels.")
@click.option("--split", help="ntu60: the split of --ann (xsub_val, xview_val, ...); with CONFIG: the test split.")
@click.option("--aggregate", type=click.Choice(AGGREGATES),
              help="How per-view scores are averaged: prob = softmax then mean (default; with CONFIG: the "
                   "model's average_clips), score = mean, max = element-wise max.")
@click.option("--clips", cls=MultiOption, metavar="K[,K ...]",
              help="Also report the table for the first K views, e.g. 1,3,5,10.")
@click.option("--views-per-clip", type=click.IntRange(1), default=1, show_default=True,
              help="--preds with per-view scores: views of one clip (2 with flip TTA), so --clips k means k clips.")
@click.option("--view-order", type=click.Choice(["flip-major", "clip-major"]), default="flip-major",
              show_default=True, help="How the views of a clip are laid out (mmaction2 flip TTA: flip-major).")
@click.option("--per-class", is_flag=True, help="ntu60: per-class accuracy and the most confused pairs.")
@click.option("--protocol", type=click.Choice(["mlpd", "matlab"]), default="mlpd", show_default=True,
              help="kaist: the headline protocol (both are always computed).")
@click.option("--setup", type=click.Choice(list(SETUPS)), default="Reasonable", show_default=True,
              help="kaist: which GTs count (the rest are ignored).")
@click.option("--plot", type=click.Path(), metavar="FILE.png|svg",
              help="kaist: miss rate vs FPPI; ntu60: accuracy vs clips (with --clips), else a confusion matrix.")
@click.option("--save-metrics", type=click.Path(), metavar="FILE", help="Write the JSON result to FILE.")
@click.option("--force", is_flag=True, help="Replace an existing --save-metrics file.")
@click.option("--baseline", type=click.Path(), metavar="FILE",
              help="Compare with a --save-metrics file; exit 1 when a metric regressed.")
@click.option("--tolerance", cls=MultiOption, metavar="X|METRIC=X",
              help="Allowed regression in metric points (default 0); METRIC=X per metric, e.g. MR.night=1.0.")
@click.option("--summary", type=click.Path(), metavar="FILE",
              help="Append the gate's markdown summary to FILE (e.g. \"$GITHUB_STEP_SUMMARY\").")
@click.option("--cfg-options", cls=MultiOption, metavar="KEY=VALUE", help="With CONFIG: override config keys.")
@click.option("--project-root", type=click.Path(file_okay=False), metavar="DIR",
              help="With CONFIG: put DIR (and the current directory) on sys.path for the config's custom_imports.")
@click.option("--tta", cls=MultiOption, metavar="SETTING[,SETTING ...]",
              help="kaist with CONFIG: test-time augmentation settings, one row each: none, flip, "
                   "scale:WxH[:WxH...], a + combination (flip+scale:640x512:800x640), config (the config's "
                   "tta_model + tta_pipeline). Each distinct view runs once. Default: none.")
@click.option("--views-per-batch", type=int, help="With CONFIG: views per forward pass.")
@click.option("--cache", type=click.Path(), metavar="DIR", help="With CONFIG: per-clip score cache.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--launcher", type=click.Choice(["none", "pytorch"]), default="none", show_default=True)
@click.option("--limit", type=int, help="With CONFIG: only the first N test samples.")
@click.option("--dump", type=click.Path(), metavar="DIR",
              help="With CONFIG: write mmaction2-style dumps DIR/clips_<k>.pkl; kaist: DIR/<setting>_result.txt "
                   "and DIR/<setting>.pkl as tools/test.py --out (all readable with --preds).")
@output_options
def eval_cmd(config, checkpoint, task, preds, coefficients, apply_softmax, ann, split, aggregate, clips,
             views_per_clip, view_order, per_class, protocol, setup, plot, save_metrics, force, baseline, tolerance,
             summary, cfg_options, project_root, tta, views_per_batch, cache, device, launcher, limit, dump, fmt):
    """Metric tables from predictions, or from running CONFIG + CHECKPOINT.

    \b
    ckpt eval --task ntu60 --preds joint.pkl bone.pkl --coefficients 1 1 [--ann ntu60.pkl --split xsub_val]
    ckpt eval --task kaist --preds MLPD_result.txt --ann KAIST_annotation.json [--protocol mlpd|matlab]
    ckpt eval CONFIG CHECKPOINT --clips 1,3,5,10
    ckpt eval CONFIG CHECKPOINT --task kaist --ann KAIST_annotation.json --tta none,flip,flip+scale:640x512:800x640
    Add --save-metrics m.json to keep the result, --baseline m.json --tolerance 0.5 to gate on it (exit 1)."""
    from ckpttool.engine.evaluate import run_eval

    report = run_eval(config, checkpoint, task=task, preds=preds, ann=ann, plot=plot, save_metrics=save_metrics,
                      force=force, baseline=baseline, tolerance=tolerance, summary=summary, clips=clips,
                      aggregate=aggregate, coefficients=coefficients, apply_softmax=apply_softmax, split=split,
                      per_class=per_class, protocol=protocol, setup=setup,
                      **({} if config else {"views_per_clip": views_per_clip, "view_order": view_order}),
                      **_model_options(
                          config, cfg_options=list(cfg_options) or None, views_per_batch=views_per_batch,
                          cache=cache, device=device, launcher=launcher, limit=limit, dump=dump,
                          project_root=project_root, **({"tta": list(tta)} if tta else {})))
    finish(report.to_dict(), tables(report), fmt, report.failed)


def _model_options(config, **options) -> dict:
    """The options of a model run, only when there is one (prediction files take none of them)."""
    return options if config else {}


def tables(report) -> list:
    """The tables of an ``EvalReport``: the task's, then the gate's."""
    out = kaist_tables(report.result) if report.result["task"] == "kaist" else ntu_tables(report.result)
    if report.result.get("mode") == "model" and report.result["task"] == "kaist":
        out.append(detector_views_table(report.result))
    if report.gate is not None:
        out.append(gate_table(report.gate, report.gate["baseline"]))
    return out


def _acc_rows(rows, k=None):
    return [([k] if k is not None else []) + [r["name"], r["top1"], r["top5"], r["mean_class_accuracy"]]
            for r in rows]


def _pct_columns(*columns) -> dict:
    return {c: pct for c in columns}


def ntu_tables(r: dict) -> list:
    head = ["name", "top-1", "top-5", "mean class acc"]
    out = []
    views = r.get("views", 1)
    if r.get("rows"):
        title = f"NTU60: {r['num_samples']} samples, {r.get('num_classes', '?')} classes"
        if views > 1:
            title += f", {views} views ({r['aggregate']})"
        out.append(Table(head, _acc_rows(r["rows"]), title=title + " (%)", primary=True,
                         formats=_pct_columns(1, 2, 3)))
    if r.get("clips"):
        rows = [row for c in r["clips"] for row in _acc_rows(c["rows"], c["k"])]
        if r.get("rows"):  # prediction files: per-view scores, the first k views
            title, col = "Accuracy using the first k views (%)", "k views"
        else:  # a model run: num_clips=k on the sampling step (a clip may give several views, e.g. flips)
            title, col = f"{r.get('checkpoint', 'model')}: accuracy with num_clips=k (%)", "k clips"
        out.append(Table([col] + head, rows, title=title, primary=not r.get("rows"), formats=_pct_columns(2, 3, 4)))
    pc = r.get("per_class")
    if pc:
        out.append(Table(["label", "class", "samples", "accuracy"],
                         [[c["label"], c["name"], c["count"], c["accuracy"]] for c in pc["classes"]],
                         title=f"Per-class accuracy of {pc['row']} (%)", formats=_pct_columns(3)))
        out.append(Table(["true", "predicted as", "samples", "% of true class"],
                         [[p["true_name"], p["pred_name"], p["count"], p["fraction"]] for p in pc["confused"]],
                         title="Most confused pairs", formats=_pct_columns(3)))
    return out


def kaist_tables(r: dict) -> list:
    rows, notes = [], []
    for m in r["methods"]:
        rows.append([m["name"]] + [m["MR"][s] for s in ("all", "day", "night")]
                    + [m["recall"]["all"], m["AP50"]["all"], m["images_without_detections"]])
        notes += m["notes"]
        if m["unsorted_images"]:
            notes.append(f"{m['name']}: {m['unsorted_images']} images list detections out of score order; they were "
                         "sorted (the MLPD script itself needs sorted input)")
    title = f"KAIST {r['setup']}, {r['protocol']} protocol: MR-2 (%, lower is better), recall and AP@0.5 (%)"
    main = Table(["method", "MR all", "MR day", "MR night", "recall", "AP50", "images w/o det"], rows,
                 title=title, primary=True, notes=notes, formats=_pct_columns(1, 2, 3, 4, 5))
    both = [[m["name"]] + [m["protocols"][p]["MR"][s] for p in ("mlpd", "matlab")
                           for s in ("all", "day", "night")] for m in r["methods"]]
    proto = Table(["method", "mlpd all", "mlpd day", "mlpd night", "matlab all", "matlab day", "matlab night"],
                  both, title="MR-2 under both protocols (%)", formats=_pct_columns(1, 2, 3, 4, 5, 6))
    return [main, proto]


def detector_views_table(r: dict) -> Table:
    """Per TTA setting of a detector run: its views and the config's own test_evaluator metrics."""
    names = sorted({k for m in r["methods"] for k in m.get("evaluator", {})})
    rows = [[m["name"], len(m["views"])] + [m["evaluator"].get(k) for k in names] for m in r["methods"]]
    v = r["views"]
    notes = [f"{len(v['distinct'])} distinct views: {len(v['run'])} run ({v['forward_passes']} forward passes), "
             f"{len(v['cached'])} from the cache"]
    if r.get("limit"):
        notes.append(f"--limit {r['limit']}: the first {r['limit']} of {r['num_test_images']} test images only")
    return Table(["setting", "views"] + names, rows, title=f"{r['checkpoint']}: views and the config's evaluator",
                 notes=notes)


def gate_table(g: dict, baseline: str) -> Table:
    rows = [[c["metric"], c["baseline"], c["current"], c["delta"], c["tolerance"], c["better"], c["status"]]
            for c in g["checks"]]
    head = "PASSED" if g["passed"] else f"FAILED ({g['regressions']} regression(s))"
    return Table(["metric", "baseline", "current", "delta", "tolerance", "better", "status"], rows,
                 title=f"Regression gate vs {baseline}: {head}",
                 formats={1: pct, 2: pct, 3: signed, 4: lambda x: f"{x:g}"})
