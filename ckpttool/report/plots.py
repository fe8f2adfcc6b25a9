"""Figures for `ckpt eval` (and `ckpt runs`), in the one style of :mod:`ckpttool.report.style`.

Each figure has three parts, so that scripts, tests and the CLI use the same pieces:

- ``*_data(...)``: the numbers drawn, as plain JSON data (the CLI puts them in its JSON output under ``"plot"``);
- ``*_figure(data)``: a matplotlib ``Figure`` built from that data (nothing written; tests read it);
- ``plot_*(..., path, force=False)``: both, then the figure written atomically as PDF / PNG / SVG
  (by the extension), never over an existing file without ``force``. Returns ``{"files": [...], "data": ...}``.

Figures: KAIST miss rate vs FPPI (:func:`plot_miss_rate`), accuracy vs clips or views (:func:`plot_clips`), a
confusion matrix (:func:`plot_confusion`).
"""
from __future__ import annotations

import os

from ckpttool.errors import CkptError
from ckpttool.report import style

SUBSETS = ("all", "day", "night")
MR_BAND = (1e-2, 1.0)            # the FPPI range MR^-2 averages over
FPPI_LIMITS = (1e-3, 1e1)
MISS_RATE_LIMITS = (0.05, 1.0)
MISS_RATE_TICKS = (0.05, 0.10, 0.20, 0.30, 0.40, 0.50, 0.64, 0.80, 1.0)
PROTOCOL_NAMES = {"mlpd": "MLPD protocol", "matlab": "Matlab toolbox protocol"}
METRICS = {"top1": ("top1", "Top-1 (%)"), "top5": ("top5", "Top-5 (%)"),
           "mean_class": ("mean_class_accuracy", "Mean class accuracy (%)")}
STREAM_NAMES = {"rgb": "RGB", "pose": "Pose", "score": "Score"}


def check_plot_paths(path: str, panels: bool = False, force: bool = False, inputs=()) -> list[str]:
    """The files ``--plot path`` (and ``--plot-panels``) will write, checked before any long work."""
    paths = panel_paths(path) if panels else [path]
    return [style.check_figure_path(p, force, inputs) for p in paths]


def panel_paths(path: str, subsets=SUBSETS) -> list[str]:
    """``mr.pdf`` -> ``mr_all.pdf``, ``mr_day.pdf``, ``mr_night.pdf``."""
    stem, ext = os.path.splitext(str(path))
    return [f"{stem}_{s}{ext}" for s in subsets]


# --- KAIST: miss rate vs false positives per image ------------------------------------------------------------
def _curve_points(fppi, miss_rate, xlim=FPPI_LIMITS, ylim=MISS_RATE_LIMITS):
    """The polyline of a miss-rate curve, thinned without changing the drawing: within a run of equal miss rate
    only its first and last point are kept (the line between them is flat), and points outside the axes' limits
    are dropped except the ones next to visible points, so that the line still reaches the edges."""
    import numpy as np

    x, y = np.asarray(fppi, dtype=float), np.asarray(miss_rate, dtype=float)
    if len(x) == 0:
        return [], []
    keep = np.ones(len(x), dtype=bool)
    if len(x) > 2:
        same_prev = np.r_[False, y[1:] == y[:-1]]
        same_next = np.r_[y[:-1] == y[1:], False]
        keep = ~(same_prev & same_next)
    inside = (x >= xlim[0]) & (x <= xlim[1]) & (y >= ylim[0]) & (y <= ylim[1])
    near = inside | np.r_[inside[1:], False] | np.r_[False, inside[:-1]]
    keep &= near
    return [float(f"{v:.6g}") for v in x[keep]], [float(f"{v:.6g}") for v in y[keep]]


def miss_rate_data(methods: list, setup: str = "Reasonable", protocol: str = "mlpd", num_images=None,
                   subsets=SUBSETS) -> dict:
    """The plotted data of :func:`miss_rate_figure` from ``evaluate_kaist(..., curves=True)["methods"]``.

    ``methods`` keep their given order for colours; per subset the series are ordered by MR (best first), which is
    the legend's order."""
    out = {"kind": "miss_rate_fppi", "setup": setup, "protocol": protocol, "mr_band_fppi": list(MR_BAND),
           "xlim": list(FPPI_LIMITS), "ylim": list(MISS_RATE_LIMITS), "methods": [m["name"] for m in methods],
           "num_images": dict(num_images or {}), "subsets": {}}
    for sub in subsets:
        series = []
        for m in methods:
            curve = (m.get("curves") or {}).get(sub) or {"fppi": [], "miss_rate": []}
            x, y = _curve_points(curve["fppi"], curve["miss_rate"])
            series.append({"name": m["name"], "MR": m["MR"].get(sub), "fppi": x, "miss_rate": y})
        series.sort(key=lambda s: (s["MR"] is None, s["MR"] if s["MR"] is not None else 0.0))
        out["subsets"][sub] = series
    return out


def mr_label(name: str, mr) -> str:
    """The legend entry KAIST papers print: ``MLPD 7.58%``."""
    return f"{name} {mr:.2f}%" if mr is not None else f"{name} (no MR)"


def _title(data: dict, subset: str | None = None) -> str:
    parts = [f"KAIST {data['setup']}"]
    if subset is not None:
        parts.append(_subset_title(data, subset))
    parts.append(PROTOCOL_NAMES.get(data["protocol"], data["protocol"]))
    return ", ".join(parts)


def _subset_title(data: dict, subset: str) -> str:
    n = data.get("num_images", {}).get(subset)
    return subset.capitalize() + (f" ({n} images)" if n else "")


def _miss_rate_panel(ax, data: dict, subset: str, look: dict) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.axvspan(*MR_BAND, color="#000000", alpha=0.06, linewidth=0, zorder=0, gid="mr_band")
    ax.annotate("MR$^{-2}$ range", xy=(MR_BAND[0], 1), xycoords=("data", "axes fraction"),
                xytext=(2, -3), textcoords="offset points", ha="left", va="top",
                fontsize=style.FONT_SIZE - 2, color="#555555")
    for s in data["subsets"][subset]:
        if not s["fppi"]:
            continue
        ax.plot(s["fppi"], s["miss_rate"], label=mr_label(s["name"], s["MR"]), gid=s["name"],
                markevery=0.1, **look[s["name"]])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*FPPI_LIMITS)
    ax.set_ylim(*MISS_RATE_LIMITS)
    ax.yaxis.set_major_locator(FixedLocator(MISS_RATE_TICKS))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda t, _: "1" if t >= 1 else f"{t:.2f}".lstrip("0")))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major")
    ax.set_xlabel("False positives per image")
    ax.set_ylabel("Miss rate")
    style.legend(ax, loc="upper right")   # curves run from upper left to lower right: this corner is free


def miss_rate_figure(data: dict, subsets=None):
    """One figure, one panel per subset (``data["subsets"]`` order unless ``subsets``), each a column wide; a
    method has the same colour and marker in every panel."""
    subsets = list(subsets or data["subsets"])
    look = style.series_styles(data["methods"])
    with style.context():
        fig, axes = style.new_figure(ncols=len(subsets))
        for ax, sub in zip(axes, subsets):
            _miss_rate_panel(ax, data, sub, look)
            ax.set_title(_subset_title(data, sub) if len(subsets) > 1 else _title(data, sub))
        if len(subsets) > 1:
            fig.suptitle(_title(data))
    return fig


def plot_miss_rate(methods: list, path: str, setup: str = "Reasonable", protocol: str = "mlpd",
                   num_images=None, panels: bool = False, force: bool = False, inputs=()) -> dict:
    """KAIST miss rate vs FPPI of ``methods`` (``evaluate_kaist(..., curves=True)["methods"]``) to ``path``, or
    with ``panels`` one file per subset (``mr_all.pdf``, ...). Returns ``{"files", "data"}``."""
    data = miss_rate_data(methods, setup, protocol, num_images)
    if panels:
        files = [style.save_figure(miss_rate_figure(data, [sub]), p, force, inputs)["path"]
                 for sub, p in zip(SUBSETS, panel_paths(path))]
    else:
        files = [style.save_figure(miss_rate_figure(data), path, force, inputs)["path"]]
    return {"files": files, "data": data}


# --- accuracy vs clips / views ----------------------------------------------------------------------------------
def display_name(name: str) -> str:
    """Row names as a reader expects them: ``rgb`` -> ``RGB``, ``RGBPose_1:1`` -> ``RGB+Pose 1:1``,
    ``joint:pose`` -> ``joint Pose``; other names stay as they are."""
    at = name.find("RGBPose_")
    if at >= 0:
        prefix, shown = name[:at].rstrip(":"), "RGB+Pose " + name[at + len("RGBPose_"):]
    else:
        prefix, _, last = name.rpartition(":")
        shown = STREAM_NAMES.get(last, last)
    return f"{prefix} {shown}" if prefix else shown


def clips_data(clips: list, metric: str = "top1", varied: str = "num_clips", marked=None, title: str = "") -> dict:
    """The plotted data of :func:`clips_figure` from a result's ``"clips"`` list ``[{"k", "rows"}]``.

    ``varied``: ``"num_clips"`` (a model run: ``num_clips=k`` on the test pipeline) or ``"views"`` (prediction
    files: the first k stored views averaged); ``marked``: the x to mark (the config's own ``num_clips``)."""
    if metric not in METRICS:
        raise CkptError(f"--plot-metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not clips:
        raise CkptError("no clip counts to plot")
    key, label = METRICS[metric]
    names = [r["name"] for r in clips[0]["rows"]]
    series = []
    for name in names:
        ys = [next((r.get(key) for r in c["rows"] if r["name"] == name), None) for c in clips]
        series.append({"name": name, "label": display_name(name), "y": ys})
    xlabel = "Test clips (num_clips)" if varied == "num_clips" else "Views averaged (first k of each sample)"
    return {"kind": "accuracy_vs_clips", "varied": varied, "metric": metric, "xlabel": xlabel, "ylabel": label,
            "x": [c["k"] for c in clips], "marked": marked, "title": title, "series": series}


def clips_figure(data: dict):
    """Accuracy vs clip count, one line per stream / fusion, a column wide."""
    look = style.series_styles([s["name"] for s in data["series"]])
    with style.context():
        fig, (ax,) = style.new_figure()
        for s in data["series"]:
            ax.plot(data["x"], s["y"], label=s["label"], gid=s["name"], **look[s["name"]])
        ax.set_xticks(data["x"])
        ax.set_xlabel(data["xlabel"])
        ax.set_ylabel(data["ylabel"])
        if data.get("marked") is not None:
            m = data["marked"]
            style.mark_x(ax, m, f"config: num_clips={m}" if data["varied"] == "num_clips" else f"all {m} views")
        if data.get("title"):
            ax.set_title(data["title"])
        style.legend(ax, loc="best")
    return fig


def plot_clips(clips: list, path: str, metric: str = "top1", varied: str = "num_clips", marked=None,
               title: str = "", force: bool = False, inputs=()) -> dict:
    """Accuracy vs clips (or views) to ``path``. Returns ``{"files", "data"}``."""
    data = clips_data(clips, metric, varied, marked, title)
    return {"files": [style.save_figure(clips_figure(data), path, force, inputs)["path"]], "data": data}


# --- confusion matrix -----------------------------------------------------------------------------------------------
def confusion_figure(confusion, labels=None, title: str = ""):
    """Row-normalised confusion matrix (true class per row), two columns wide for 60 classes."""
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    n = len(cm)
    size = min(max(style.COLUMN_WIDTH, 2 + 0.085 * n), 2 * style.COLUMN_WIDTH + 0.2)
    with style.context(**{"axes.grid": False}):
        fig, (ax,) = style.new_figure(width=size, height=size)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if labels is not None and n <= 60:
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            ax.set_xticklabels(labels, rotation=90, fontsize=4)
            ax.set_yticklabels(labels, fontsize=4)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        if title:
            ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, label="Fraction of the true class")
    return fig


def plot_confusion(confusion, labels, path: str, title: str = "", force: bool = False, inputs=()) -> dict:
    data = {"kind": "confusion", "title": title, "labels": list(labels) if labels is not None else None,
            "confusion": [[int(v) for v in row] for row in confusion]}
    return {"files": [style.save_figure(confusion_figure(confusion, labels, title), path, force, inputs)["path"]],
            "data": data}


# --- training curves (`ckpt runs --plot`) ---------------------------------------------------------------------------
def runs_figure(info: dict, path: str, names=None, force: bool = True) -> str:
    """`ckpt runs DIR --plot FILE`: validation curves per stream (one panel each, or one panel for a single-stream
    run), the lr in effect during each epoch on a second axis, collapses marked. `info` is `workdirs.runs.scan()`'s
    result; `names` the metrics to draw (default: all). The file the user names is (re)drawn, atomically."""
    from ckpttool.report.streams import stream_label, stream_of

    try:
        style.figure_format(path)
    except CkptError as exc:
        raise CkptError(f"--plot {exc}") from None
    names = [n for n in (names or info["metrics"]) if n in info["metrics"]]
    panels: dict = {}
    for n in names:
        panels.setdefault(stream_of(n)[0] if info.get("streams") else None, []).append(n)
    label = {n: stream_of(n)[1] if info.get("streams") else n for n in names}
    look = style.series_styles(label[n] for n in names)   # a metric keeps its look in every stream's panel
    steps = [r["step"] for r in info["rows"]]
    lrs = [r["train"].get("lr") for r in info["rows"]]
    with style.context():
        fig, axes = style.new_figure(ncols=max(len(panels), 1))
        for ax, (stream, metrics) in zip(axes, panels.items()):
            for n in metrics:
                s = info["metrics"][n]
                scale = 100.0 if s["percent"] else 1.0
                pts = [(r["step"], scale * r["metrics"][n]) for r in info["rows"] if n in r["metrics"]]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label[n], gid=n, **look[label[n]])
                for c in s["collapses"]:
                    ax.scatter([c["to_step"]], [scale * c["to"]], marker="x", color="#cc0000", s=40, zorder=5)
            ax.set_title(stream_label(stream) if stream else os.path.basename(os.path.normpath(info["work_dir"])))
            ax.set_xlabel(str(info["unit"]).capitalize())
            ax.set_ylabel("Accuracy (%)" if all(info["metrics"][n]["percent"] for n in metrics) else "Value")
            style.legend(ax, loc="lower left")
            if any(v is not None for v in lrs):
                ax2 = ax.twinx()
                ax2.grid(False)
                ax2.plot([s for s, v in zip(steps, lrs) if v is not None], [v for v in lrs if v is not None],
                         color="#777777", linestyle="--", linewidth=0.8)
                ax2.set_ylabel("lr (in effect)", color="#777777")
                ax2.set_yscale("log")
    return style.save_figure(fig, path, force=force)["path"]
