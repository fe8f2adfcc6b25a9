"""Progress bars (tqdm) and log lines on stderr, only for a person watching.

Every library function that can take more than a second takes ``progress=``:

- ``None`` (the default): a bar when stderr is a terminal (or in a Jupyter notebook, where ``tqdm.auto`` draws
  the notebook widget) and the CLI's ``--quiet`` is off;
- ``True``: always a bar (on stderr); ``False``: never.

Bars count bytes where the work is bytes (``unit="B"``: ``1.20G/1.20G [00:03, 402MB/s]``), samples or files
otherwise, always end at their total, and name their phase in the description (``reading a.pth``,
``writing out.pth``, ``verifying out.pth``). stdout is never touched, so ``--format json`` stays one object.

    from ckpttool.report.progress import bar
    with bar(total_bytes, "writing out.pth", unit="B", progress=progress) as b:
        for chunk in chunks:
            ...
            b.update(len(chunk))
"""
from __future__ import annotations

import sys

_quiet = False


def set_quiet(value: bool) -> None:
    """The CLI's ``--quiet``: no bars and no log lines (warnings still print)."""
    global _quiet
    _quiet = bool(value)


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def enabled(progress: bool | None = None) -> bool:
    """Whether a bar is drawn for ``progress=`` (see the module doc)."""
    if progress is not None:
        return bool(progress)
    if _quiet:
        return False
    try:
        return sys.stderr.isatty() or _in_notebook()
    except (AttributeError, ValueError):   # a closed or replaced stderr
        return False


class _Off:
    """What :func:`bar` returns when no bar is drawn: the same methods, doing nothing."""
    n = 0
    total = None

    def update(self, n=1):
        self.n += n

    def set_description(self, desc=None, refresh=True):
        pass

    def set_postfix_str(self, s="", refresh=True):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bar(total=None, desc: str = "", unit: str = "it", progress: bool | None = None, leave: bool = True):
    """A context-managed tqdm bar on stderr (the notebook one in Jupyter), or a do-nothing stand-in.

    ``unit="B"`` shows bytes with binary prefixes; any other unit is a count with its rate (``samples/s``)."""
    if not enabled(progress):
        return _Off()
    from tqdm.auto import tqdm

    kwargs = dict(unit_scale=True, unit_divisor=1024) if unit == "B" else {}
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, dynamic_ncols=True,
                mininterval=0.2, smoothing=0.1, **kwargs)


def track(iterable, desc: str = "", total=None, unit: str = "it", weight=None, progress: bool | None = None):
    """Iterate ``iterable`` with a bar; ``weight(item)`` is how much each item advances it (e.g. its bytes, then
    pass ``total`` in the same unit), else one. The bar reaches its total when the iteration ends."""
    if total is None and hasattr(iterable, "__len__") and weight is None:
        total = len(iterable)
    with bar(total, desc, unit, progress) as b:
        for item in iterable:
            yield item
            b.update(weight(item) if weight is not None else 1)


def log(message: str) -> None:
    """An informational line on stderr, only for a person watching (TTY) and without --quiet."""
    if enabled():
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)   # above any bar, not through it


def warn(message: str) -> None:
    """A warning on stderr; shown even with --quiet, since it concerns the result."""
    print(f"ckpt: warning: {message}", file=sys.stderr)


# The bar used to be a context manager over an iterable (``with progress(items, length=n, label=...) as it``);
# kept for callers not yet moved to :func:`track` / :func:`bar`.
def progress(iterable, length: int | None = None, label: str = "", unit: str = "it", progress=None):
    import contextlib

    return contextlib.nullcontext(track(iterable, label, total=length, unit=unit, progress=progress))
