"""One look for every figure ckpt draws (MR–FPPI, accuracy vs clips, training curves), and one way to write them.

Figures are sized for a paper: one panel is a column wide (:data:`COLUMN_WIDTH` = 3.5 in) with 8 pt text, so
they print legibly at that size; the format follows the file's extension (PDF / SVG are vector, PNG is 300 dpi).
Every figure is rendered in memory and written through :func:`ckpttool.io.write.write_bytes`, the one atomic
writer (never over an existing file without ``force``), so a crash leaves no half-written image.

Typical use (a new figure in three calls)::

    from ckpttool.report import style
    style.check_figure_path(path, force)                 # before any long work: bad extension, exists, no dir
    with style.context():
        fig, axes = style.new_figure(ncols=1)            # a matplotlib Figure (no pyplot state) and its axes
        look = style.series_styles(names)                # name -> {"color", "marker"}, stable across panels
        for name in names:
            axes[0].plot(x, y[name], label=name, **look[name])
        style.legend(axes[0])
        written = style.save_figure(fig, path, force=force)   # {"path", "format", "bytes"}

matplotlib is imported only inside these functions (``import ckpttool.report.style`` costs nothing).
"""
from __future__ import annotations

import contextlib
import io
import os

from ckpttool.errors import CkptError

FORMATS = (".pdf", ".png", ".svg")
COLUMN_WIDTH = 3.5            # inches: one column of a two-column paper
PANEL_HEIGHT = 2.9            # inches: a panel's height (the legend sits inside the axes)
FONT_SIZE = 8                 # points, as printed at COLUMN_WIDTH
PNG_DPI = 300
# Okabe & Ito's colour-blind-safe palette (black last), then markers so that a grey print still tells lines apart.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")

RC = {
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
    "legend.fontsize": FONT_SIZE - 1,
    "figure.titlesize": FONT_SIZE + 1,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "grid.color": "#b0b0b0",
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.edgecolor": "#cccccc",
    "legend.handlelength": 1.8,
    "legend.borderaxespad": 0.4,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "pdf.fonttype": 42,       # TrueType in PDF: editable text, accepted by IEEE/ACM checkers
    "ps.fonttype": 42,
    "svg.fonttype": "none",   # SVG text stays text
    "savefig.dpi": PNG_DPI,
}


def figure_format(path: str) -> str:
    """'pdf' | 'png' | 'svg' from the file name, or a CkptError naming the choices."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise CkptError(f"{path}: a figure's name must end in .pdf, .png or .svg")
    return ext[1:]


def check_figure_path(path: str, force: bool = False, inputs=()) -> str:
    """Fail before any long work on a figure path that cannot be written: wrong extension, an existing file
    without ``force``, a missing directory, one of the inputs. Returns the absolute path."""
    from ckpttool.io.write import check_output

    figure_format(path)
    return check_output(path, inputs, force)


@contextlib.contextmanager
def context(**overrides):
    """matplotlib rcParams of the ckpt style for the figures made (and saved) inside the block."""
    import matplotlib

    with matplotlib.rc_context({**RC, **overrides}):
        yield


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None,
               sharey: bool = False, sharex: bool = False):
    """A matplotlib ``Figure`` (not registered with pyplot, so nothing global) of ``ncols`` × ``nrows`` panels,
    each :data:`COLUMN_WIDTH` wide unless ``width`` (the whole figure) is given. Returns ``(fig, axes)`` with
    ``axes`` a flat list, left to right, top to bottom. Call inside :func:`context`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width or COLUMN_WIDTH * ncols, height or PANEL_HEIGHT * nrows),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    return fig, [ax for row in axes for ax in row]


def series_styles(names) -> dict:
    """``{name: {"color", "marker", "linestyle"}}``: the i-th distinct name gets the i-th colour and marker.
    Compute it once over every series of a figure, so one method looks the same in every panel."""
    out = {}
    for name in names:
        if name not in out:
            i = len(out)
            out[name] = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)],
                         "linestyle": LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)]}
    return out


def marker_every(n_points: int, target: int = 8):
    """``markevery`` that puts about ``target`` markers on a line of ``n_points`` (dense curves stay readable)."""
    return max(1, n_points // target) if n_points > target else None


def legend(ax, order=None, **kwargs):
    """A legend of ``ax``'s labelled lines, in ``order`` (a list of labels) when given, else in drawing order."""
    handles, labels = ax.get_legend_handles_labels()
    if order is not None:
        pos = {label: i for i, label in enumerate(order)}
        pairs = sorted(zip(handles, labels), key=lambda p: pos.get(p[1], len(pos)))
        handles, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    return ax.legend(handles, labels, **kwargs)


def mark_x(ax, x, label: str, color: str = "#555555"):
    """A dashed vertical line at ``x`` with a small label at the top (e.g. the config's own num_clips)."""
    lo, hi = ax.get_xlim()
    ax.axvline(x, color=color, linestyle="--", linewidth=0.8, zorder=0.5)
    right = x > (lo * hi) ** 0.5 if ax.get_xscale() == "log" else x > (lo + hi) / 2   # label stays inside
    ax.annotate(label, xy=(x, 0), xycoords=("data", "axes fraction"), xytext=(-2 if right else 2, 2),
                textcoords="offset points", ha="right" if right else "left", va="bottom",
                fontsize=FONT_SIZE - 1, color=color)


def render(fig, fmt: str) -> bytes:
    """The figure as ``fmt`` ('pdf', 'png', 'svg') bytes, rendered in memory. Output is reproducible: no
    creation date in PDF/SVG metadata."""
    buf = io.BytesIO()
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": "ckpt"},
                "svg": {"Date": None, "Creator": "ckpt"}}[fmt]
    with context():
        fig.savefig(buf, format=fmt, dpi=PNG_DPI, metadata=metadata)
    return buf.getvalue()


def save_figure(fig, path: str, force: bool = False, inputs=()) -> dict:
    """Render ``fig`` in the format of ``path``'s extension and write it atomically (never over an existing file
    without ``force``). Returns ``{"path", "format", "bytes"}``."""
    from ckpttool.io.write import write_bytes

    fmt = figure_format(path)
    data = render(fig, fmt)
    written = write_bytes(path, data, force=force, inputs=inputs)
    return {"path": written, "format": fmt, "bytes": len(data)}
