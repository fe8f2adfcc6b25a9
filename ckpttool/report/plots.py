"""Figures for `ckpt eval` (PNG or SVG, chosen by the file's extension). matplotlib is imported lazily, Agg backend.

- `plot_miss_rate(methods, path)`: KAIST miss rate vs false positives per image, log-log, one panel per subset
  (all/day/night), one line per method with its MR in the legend.
- `plot_clips(clips, path)`: top-1 accuracy vs number of views, one line per row.
- `plot_confusion(confusion, labels, path)`: a confusion matrix (rows: true class, columns: predicted).
"""
from __future__ import annotations

import os

from ckpttool.errors import CkptError

FORMATS = (".png", ".svg")


def _pyplot(path: str):
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise CkptError(f"--plot {path}: the file name must end in .png or .svg")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CkptError(f"--plot {path}: directory {directory} does not exist")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str) -> None:
    """Fail early (before the evaluation) on a plot path that cannot be written."""
    if os.path.splitext(path)[1].lower() not in FORMATS:
        raise CkptError(f"--plot {path}: the file name must end in .png or .svg")
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CkptError(f"--plot {path}: directory {os.path.dirname(os.path.abspath(path))} does not exist")


def _save(fig, plt, path, force: bool = False, inputs=()):
    """Rendered in memory, then written through the one atomic writer: a full disk never leaves half a file."""
    import io

    from ckpttool.io.write import write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1].lower()[1:], dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getbuffer(), force=force, inputs=inputs)
    return path


def plot_miss_rate(methods: list, path: str, subsets=("all", "day", "night"), *, force=False, inputs=()) -> str:
    """methods: [{"name", "MR": {subset: %}, "curves": {subset: {"fppi": array, "miss_rate": array}}}]."""
    plt = _pyplot(path)
    fig, axes = plt.subplots(1, len(subsets), figsize=(6 * len(subsets), 5), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, sub in zip(axes[0], subsets):
        ranked = sorted(methods, key=lambda m: (m["MR"][sub] is None, m["MR"][sub] or 0))
        for i, m in enumerate(ranked):
            c = m["curves"][sub]
            if len(c["fppi"]) == 0:
                continue
            mr = "n/a" if m["MR"][sub] is None else f"{m['MR'][sub]:.2f}%"
            ax.plot(c["fppi"], c["miss_rate"], color=colors(i % 10), linewidth=2, label=f"{mr} {m['name']}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.64, 0.8, 1]
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{t:.2f}".lstrip("0") if t < 1 else "1" for t in ticks])
        ax.set_ylim(0.01, 1)
        ax.set_xlim(2e-4, 50)
        ax.grid(which="major", axis="both")
        ax.set_xlabel("false positives per image")
        ax.set_ylabel("miss rate")
        ax.set_title(sub.capitalize())
        ax.legend(loc="lower left")
    return _save(fig, plt, path, force, inputs)


def plot_clips(clips: list, path: str, metric: str = "top1", *, force=False, inputs=()) -> str:
    """clips: [{"k", "rows": [{"name", metric}]}] -> accuracy vs views, one line per row name."""
    plt = _pyplot(path)
    fig, ax = plt.subplots(figsize=(7, 5))
    names = [r["name"] for r in clips[0]["rows"]] if clips else []
    ks = [c["k"] for c in clips]
    for name in names:
        ys = [next((r[metric] for r in c["rows"] if r["name"] == name), None) for c in clips]
        ax.plot(ks, ys, marker="o", label=name)
    ax.set_xticks(ks)
    ax.set_xlabel("views (clips) averaged")
    ax.set_ylabel(f"{metric} accuracy (%)")
    ax.grid(True, alpha=0.4)
    ax.legend()
    return _save(fig, plt, path, force, inputs)


def plot_confusion(confusion, labels, path: str, title: str = "", *, force=False, inputs=()) -> str:
    """Row-normalised confusion matrix (true class per row)."""
    import numpy as np

    plt = _pyplot(path)
    cm = np.asarray(confusion, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    n = len(cm)
    size = min(4 + 0.18 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if labels is not None and n <= 60:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticklabels(labels, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, plt, path, force, inputs)


def runs_figure(info: dict, path: str, names=None) -> str:
    """`ckpt runs DIR --plot FILE`: validation curves per stream (one panel each, or one panel for a single-stream
    run), the lr in effect during each epoch on a second axis, collapses marked. `info` is `workdirs.runs.scan()`'s
    result; `names` the metrics to draw (default: all)."""
    from ckpttool.workdirs.runs import stream_label, stream_of

    plt = _pyplot(path)

    names = [n for n in (names or info["metrics"]) if n in info["metrics"]]
    panels: dict = {}
    for n in names:
        panels.setdefault(stream_of(n)[0] if info.get("streams") else None, []).append(n)
    fig, axes = plt.subplots(1, len(panels) or 1, figsize=(5 * max(len(panels), 1), 4), squeeze=False)
    steps = [r["step"] for r in info["rows"]]
    lrs = [r["train"].get("lr") for r in info["rows"]]
    for ax, (stream, metrics) in zip(axes[0], panels.items()):
        for n in metrics:
            s = info["metrics"][n]
            scale = 100.0 if s["percent"] else 1.0
            pts = [(r["step"], scale * r["metrics"][n]) for r in info["rows"] if n in r["metrics"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=stream_of(n)[1] if stream else n)
            for c in s["collapses"]:
                ax.scatter([c["to_step"]], [scale * c["to"]], marker="x", color="red", s=80, zorder=5)
        ax.set_title(stream_label(stream) if stream else os.path.basename(os.path.normpath(info["work_dir"])))
        ax.set_xlabel(info["unit"])
        ax.set_ylabel("%" if all(info["metrics"][n]["percent"] for n in metrics) else "value")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        if any(v is not None for v in lrs):
            ax2 = ax.twinx()
            ax2.plot([s for s, v in zip(steps, lrs) if v is not None], [v for v in lrs if v is not None],
                     color="gray", linestyle="--", linewidth=1)
            ax2.set_ylabel("lr (in effect)", color="gray")
            ax2.set_yscale("log")
    fig.tight_layout()
    return _save(fig, plt, path, force=True)   # the figure the user names is (re)drawn, atomically
