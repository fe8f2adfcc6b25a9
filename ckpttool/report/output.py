"""One output layer for every command.

A command's library function returns a plain, JSON-able ``dict``. For the text formats the command also
describes its result as a list of :class:`Table` objects (a title, headers, rows); this module renders them with
tabulate. ``json`` prints the dict as exactly one object; ``csv`` prints the table marked ``primary`` (the one a
spreadsheet wants), other formats print every table in order.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

FORMATS = ("table", "markdown", "json", "csv", "latex")
_TABULATE_FMT = {"table": "simple", "markdown": "github", "latex": "latex_booktabs"}


@dataclass
class Table:
    headers: Sequence[str]
    rows: list[Sequence[Any]]
    title: str | None = None
    primary: bool = False
    floatfmt: str = "g"
    notes: list[str] = field(default_factory=list)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values only: tuples become lists, numpy scalars numbers, non-finite floats strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar / 0-d array
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return str(obj)


def render_json(result: dict) -> str:
    return json.dumps(to_jsonable(result), indent=2, ensure_ascii=False)


def render_tables(tables: Sequence[Table], fmt: str) -> str:
    if fmt == "csv":
        chosen = [t for t in tables if t.primary] or list(tables[:1])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for t in chosen:
            writer.writerow(t.headers)
            writer.writerows([["" if v is None else v for v in row] for row in t.rows])
        return buf.getvalue().rstrip("\n")
    from tabulate import tabulate

    parts = []
    for t in tables:
        block = []
        if t.title:
            block.append(_title(t.title, fmt))
        if t.rows or t.headers:
            block.append(tabulate(t.rows, headers=list(t.headers) if any(t.headers) else (), tablefmt=_TABULATE_FMT[fmt],
                                  floatfmt=t.floatfmt, disable_numparse=True, missingval="-")
                         if t.rows else "(none)")
        block.extend(_note(n, fmt) for n in t.notes)
        parts.append("\n".join(block))
    return "\n\n".join(parts)


def _title(text: str, fmt: str) -> str:
    if fmt == "markdown":
        return f"### {text}\n"
    if fmt == "latex":
        return f"% {text}"
    return text


def _note(text: str, fmt: str) -> str:
    return f"% {text}" if fmt == "latex" else text


_STDOUT: list = []   # the real stdout while a command runs with library output sent to stderr


def is_rank_zero() -> bool:
    """False on the other ranks of a torchrun / mmengine launch (RANK, else LOCAL_RANK): only rank 0 prints."""
    import os

    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, ""):
            return value.strip() == "0"
    return True


def result_stream():
    """Where a command's result goes: the stdout saved by :func:`library_output_to_stderr`, else sys.stdout."""
    return _STDOUT[-1] if _STDOUT else sys.stdout


class library_output_to_stderr:
    """While a command runs, whatever libraries print on stdout (mmengine's logger and FileClient warnings,
    stray prints) goes to stderr — or nowhere with --quiet — so stdout holds only the result."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __enter__(self):
        import os

        _STDOUT.append(sys.stdout)
        self._sink = open(os.devnull, "w") if self.quiet else None
        self._saved = sys.stdout
        sys.stdout = self._sink or sys.stderr
        return self

    def __exit__(self, *exc):
        sys.stdout = self._saved
        _STDOUT.pop()
        if self._sink is not None:
            self._sink.close()
        return False


def print_result(text: str) -> None:
    """One line of result (e.g. `ckpt runs --best M --path`) on the real stdout, rank 0 only."""
    if is_rank_zero():
        out = result_stream()
        out.write(text + "\n")
        out.flush()


def emit(result: dict, tables: Sequence[Table], fmt: str, out=None) -> None:
    """Print a command's result to stdout in the chosen format (rank 0 only under torchrun)."""
    if not is_rank_zero():
        return
    out = out or result_stream()
    text = render_json(result) if fmt == "json" else render_tables(tables, fmt)
    out.write(text + "\n")
    out.flush()


def human_count(n: float) -> str:
    """1234567 -> '1.23M' (parameter counts)."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_num(x: Any, digits: int = 4) -> str:
    """Compact number for tables: ints as is, floats with `digits` significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}"
    return str(x)
