"""``ckpt eval`` as one library call: metrics from prediction files or from running a model, an optional plot,
the regression gate against a baseline, its CI summary, and the saved metrics.

    from ckpttool.engine.evaluate import run_eval
    report = run_eval(task="ntu60", preds=["joint.pkl", "bone.pkl"], baseline="m.json", tolerance=["0.5"])
    report.passed, report.to_dict()          # the `--format json` object

Metrics from files stay numpy-only (no torch import); a model run goes through the task's adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ckpttool.errors import CkptError

# task -> the function of ckpttool.engine.tasks that runs CONFIG + CHECKPOINT for it
MODEL_TASKS = {"ntu60": "evaluate_recognizer", "kaist": "detector_task"}


@dataclass
class EvalReport:
    """What ``run_eval`` did: the metrics result, the gate (None without a baseline), the files written."""

    result: dict
    gate: dict | None = None
    saved: dict = field(default_factory=dict)   # {"metrics": path, "summary": path, "plot": [paths]} as written

    @property
    def passed(self) -> bool:
        return self.gate is None or bool(self.gate["passed"])

    @property
    def failed(self) -> str | None:
        """The one-line reason the requested check failed, or None."""
        if self.passed:
            return None
        from ckpttool.metrics.gate import failure_line

        return failure_line(self.gate, self.gate["baseline"])

    def to_dict(self) -> dict:
        """The ``--format json`` object: the result, with ``gate`` when a baseline was given."""
        return dict(self.result, gate=self.gate) if self.gate is not None else dict(self.result)


def run_eval(config=None, checkpoint=None, *, task=None, preds=(), ann=None, plot=None, plot_panels=False,
             plot_metric="top1", save_metrics=None, force=False, baseline=None, tolerance=(), summary=None,
             **options) -> EvalReport:
    """Evaluate, then plot, gate and save as ``ckpt eval`` does. ``plot``: a figure (PDF/PNG/SVG, see
    :mod:`ckpttool.report.plots`; ``plot_panels``: KAIST one file per subset; ``plot_metric``: top1|top5|mean_class
    for accuracy vs clips), its data under ``"plot"`` in the result. ``options``: those of
    :func:`ckpttool.metrics.ntu.evaluate_ntu` / :func:`ckpttool.metrics.kaist.evaluate_kaist` (files) or of the
    task's function in :mod:`ckpttool.engine.tasks` (``clips``, ``aggregate``, ``cfg_options``, ``split``, ``cache``, ``device`` …)."""
    from ckpttool.metrics import gate

    preds = list(preds or ())
    inputs = preds + [p for p in (ann, baseline, config, checkpoint) if p]
    tol = gate.parse_tolerance(tolerance)
    _check_outputs(inputs, save_metrics, summary, plot, force, plot_panels and task == "kaist")
    base = gate.load_baseline(baseline) if baseline else None
    result = evaluate(config, checkpoint, task=task, preds=preds, ann=ann, curves=bool(plot), **options)
    result["metrics"] = gate.flat_metrics(result)   # one flat object scripts and --greedy soups address
    report = EvalReport(result)
    if plot:
        plotted = _plot(result, plot, plot_panels, plot_metric, force=force, inputs=inputs)
        report.saved["plot"] = plotted["files"]
        report.result = dict(_without_curves(result), plot=plotted)
    if base is not None:
        report.gate = dict(gate.compare(report.result, base, *tol), baseline=baseline)
        if summary:
            from ckpttool.io.write import write_text

            report.saved["summary"] = write_text(summary, gate.summary_markdown(report.gate, baseline), append=True,
                                                 inputs=inputs)
    if save_metrics:
        report.saved["metrics"] = gate.save_metrics(report.result, save_metrics, inputs, force)
    return report


def _check_outputs(inputs, save_metrics, summary, plot, force, panels=False) -> None:
    """Every output path is checked before any work: nothing is computed that cannot be written."""
    from ckpttool.io.write import check_output

    if save_metrics:
        check_output(save_metrics, inputs, force)
    if summary:
        check_output(summary, inputs, force=True)  # appended to; never one of the inputs
    if plot:
        from ckpttool.report.plots import check_plot_paths

        check_plot_paths(plot, panels, force, inputs)
    elif panels:
        raise CkptError("--plot-panels goes with --plot FILE")


def evaluate(config=None, checkpoint=None, *, task=None, preds=(), ann=None, curves=False, clips=None,
             aggregate=None, coefficients=None, apply_softmax=False, split=None, per_class=False,
             protocol="mlpd", setup="Reasonable", views_per_clip=1, view_order="flip-major", progress=None,
             **model_options) -> dict:
    """The metrics result of ``ckpt eval``: of CONFIG + CHECKPOINT (a model run), or of ``preds`` files.
    ``progress``: bars on stderr (None: only for a terminal; see ckpttool.report.progress)."""
    from ckpttool.options import parse_clips

    ks = parse_clips(clips) if clips else None
    if config or checkpoint:
        if not (config and checkpoint):
            raise CkptError("running a model needs both CONFIG and CHECKPOINT")
        if preds or (task or "ntu60") not in MODEL_TASKS:
            raise CkptError("give either CONFIG CHECKPOINT or --task/--preds, not both")
        from ckpttool.engine import tasks

        run = getattr(tasks, MODEL_TASKS[task or "ntu60"])
        if task == "kaist":
            return run(config, checkpoint, ann=ann, protocol=protocol, setup=setup, curves=curves, split=split,
                       progress=progress, **model_options)
        return run(config, checkpoint, clips=ks, aggregate=aggregate, split=split, progress=progress, **model_options)
    if task == "kaist":
        if not ann:
            raise CkptError("--task kaist needs --ann KAIST_annotation.json")
        from ckpttool.metrics.kaist import evaluate_kaist

        return evaluate_kaist(list(preds), ann, protocol=protocol, setup=setup, curves=curves, progress=progress)
    if task == "ntu60":
        from ckpttool.metrics.ntu import evaluate_ntu

        return evaluate_ntu(list(preds), coefficients=list(coefficients or ()) or None, apply_softmax=apply_softmax,
                            ann=ann, split=split, aggregate=aggregate or "prob", clips=ks, per_class=per_class,
                            views_per_clip=views_per_clip, view_order=view_order)
    raise CkptError("give --task ntu60|kaist with --preds FILE ..., or CONFIG CHECKPOINT")


def _plot(result, path, panels=False, metric="top1", **save) -> dict:
    """Draw the figure of this result; returns ``{"files", "data"}`` (the data goes into the JSON)."""
    import os

    from ckpttool.report import plots

    if result["task"] == "kaist":
        return plots.plot_miss_rate(result["methods"], path, result["setup"], result["protocol"],
                                    result.get("num_images"), panels=panels, **save)
    if result.get("clips"):
        if result.get("rows"):  # prediction files: the first k stored views
            varied, marked = "views", result.get("views")
            title = f"NTU60, {result.get('num_samples', '?')} samples, views averaged ({result.get('aggregate')})"
        else:  # a model run: num_clips=k on the test pipeline
            varied, marked = "num_clips", result.get("config_num_clips")
            title = os.path.basename(str(result.get("checkpoint", "")))
            if result.get("split"):
                title += f", {result['split']}"
        return plots.plot_clips(result["clips"], path, metric, varied, marked, title, **save)
    if result.get("per_class"):
        from ckpttool.metrics.ntu import class_names_for

        pc = result["per_class"]
        return plots.plot_confusion(pc["confusion"], class_names_for(len(pc["confusion"])), path, title=pc["row"],
                                    **save)
    raise CkptError("--plot for ntu60 draws accuracy vs clips (give --clips) or a confusion matrix "
                    "(give --per-class)")


def _without_curves(result: dict) -> dict:
    """The result without the KAIST curves drawn by ``--plot`` (they are not part of the JSON)."""
    if "methods" not in result:
        return result
    return dict(result, methods=[{k: v for k, v in m.items() if k != "curves"} for m in result["methods"]])
