"""Progress on stderr, only when a person is watching (stderr is a TTY) and --quiet is off."""
from __future__ import annotations

import contextlib
import sys

_quiet = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = value


def enabled() -> bool:
    return not _quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(iterable, length: int | None = None, label: str = ""):
    """``with progress(items, label=...) as it: for x in it: ...`` — a click bar on stderr or the bare iterable."""
    if not enabled():
        yield iterable
        return
    import click

    with click.progressbar(iterable, length=length, label=label, file=sys.stderr,
                           show_eta=True, show_pos=True) as bar:
        yield bar


def log(message: str) -> None:
    """An informational line on stderr, only for a person watching (TTY) and without --quiet."""
    if enabled():
        print(message, file=sys.stderr)


def warn(message: str) -> None:
    """A warning on stderr; shown even with --quiet, since it concerns the result."""
    print(f"ckpt: warning: {message}", file=sys.stderr)
