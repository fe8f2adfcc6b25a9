"""``ckpt runs DIR`` as one library call: scan the work_dir, choose the metrics shown, find the best checkpoint,
draw the figure, check for collapses, or explain them.

    from ckpttool.workdirs.listing import list_runs
    report = list_runs("work_dirs/rgbpose", metrics=["acc/*top1"], fail_on_collapse=True)
    report.shown, report.best, report.passed, report.to_dict()     # the `--format json` object
"""
from __future__ import annotations

import fnmatch

from ckpttool.errors import CkptError
from ckpttool.report.streams import stream_of
from ckpttool.workdirs.runs import DEFAULT_COLLAPSE, MIN_POINTS, RunsReport, best_checkpoint, scan


def list_runs(work_dir, metrics=(), *, mode: str | None = None, collapse_drop: float = DEFAULT_COLLAPSE,
              min_points: float = MIN_POINTS, fail_on_collapse: bool = False, best: str | None = None,
              explain: bool = False, depth: int | None = None, plot: str | None = None):
    """What ``ckpt runs WORK_DIR`` does. Returns a :class:`~ckpttool.workdirs.runs.RunsReport` whose ``metrics``
    are those shown (``metrics``: names or globs, in order; by default every metric of a single-stream run, the
    top-1 of each stream and the first fusion of a multi-stream one), with ``shown`` their names; ``mode``
    (max|min) overrides the direction of those metrics. ``fail_on_collapse``: ``.failed`` names the collapses
    found. ``best=METRIC``: ``.best_path`` is the file holding the best weights for it (an error when it is
    gone). ``plot``: a figure of the validation curves (png/svg). ``explain``: the
    :class:`~ckpttool.workdirs.explain.ExplainReport` of the collapses instead (``depth``: of the weight diff)."""
    patterns = [metrics] if isinstance(metrics, str) else list(metrics or ())
    info = scan(work_dir, collapse_drop=collapse_drop, min_points=min_points)
    if not info.rows:
        raise CkptError(f"{work_dir}: no checkpoints (epoch_N/iter_N) and no validation logs found")
    chosen = select_metrics(info, patterns)
    from ckpttool.report.progress import warn

    for c in info.checkpoints:
        if c.get("safety") in ("code", "not verified"):
            warn(f"{c['path']}: {c['safety_summary']}")
    if mode:
        info = scan(work_dir, collapse_drop=collapse_drop, min_points=min_points, modes={n: mode for n in chosen})
    best_path = best_checkpoint(info, best) if best else None
    if plot:
        from ckpttool.report.plots import runs_figure

        runs_figure(info, plot, chosen)
    if explain:
        from ckpttool.workdirs.explain import explain as explain_collapses, require_events

        require_events(info)
        return explain_collapses(info, depth=depth)
    shown = info.updated(metrics={n: info.metrics[n] for n in chosen} if patterns else info.metrics, shown=chosen)
    collapses = shown.collapses
    failed = None
    if fail_on_collapse and collapses:
        failed = f"{len(collapses)} collapse(s), first: {collapses[0]['metric']} at {info.unit} " \
                 f"{collapses[0]['to_step']}"
    return shown.updated(failed=failed, best_path=best_path)


def select_metrics(info: RunsReport, patterns) -> list[str]:
    """Names matching ``patterns`` (exact names or globs), in the order given; the default set otherwise: every
    metric of a single-stream run, the top-1 of each stream (and the first fusion) of a multi-stream one."""
    names = list(info.metrics)
    if patterns:
        out = []
        for p in patterns:
            hits = [p] if p in names else fnmatch.filter(names, p)
            if not hits:
                raise CkptError(f"metric {p!r} not logged in {info.work_dir} (metrics: {', '.join(names) or 'none'})")
            out += [h for h in hits if h not in out]
        return out
    if not info.streams:
        return names
    plain, fusion = [], []
    for stream in sorted(info.streams, key=_stream_order):
        kinds = info.streams[stream]
        top = next((n for n in kinds if stream_of(n)[1] == "top1"), kinds[0])
        (fusion if stream.lower().startswith("rgbpose") else plain).append(top)
    return plain + fusion[:1]


def _stream_order(stream: str):
    low = stream.lower()
    return (low.startswith("rgbpose"), {"rgb": 0, "pose": 1}.get(low, 2), stream)
