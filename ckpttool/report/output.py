"""One output layer for every command.

A command's library function returns a plain, JSON-able ``dict``. For the text formats the command also
describes its result as a list of :class:`Table` objects (a title, headers, rows of *raw* values and the formatter
of each column); this module renders them with tabulate. ``json`` prints the dict as exactly one object; ``csv``
prints the raw values of the table marked ``primary`` (the one a spreadsheet wants: ``37683``, not ``36.8 KiB``);
``table``, ``markdown``, ``latex`` (booktabs, numeric columns right-aligned) and any other tabulate format name
print every table in order, formatted.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

FORMATS = ("table", "markdown", "json", "csv", "latex")  # the documented ones; any tabulate format name works too
_TABULATE_FMT = {"table": "simple", "markdown": "github", "latex": "latex_booktabs"}


def format_names() -> tuple[str, ...]:
    """Every name ``--format`` accepts: ours, then tabulate's own (``grid``, ``rst``, ``html``, ``tsv`` …)."""
    from tabulate import tabulate_formats

    return FORMATS + tuple(f for f in tabulate_formats if f not in FORMATS)


@dataclass(frozen=True)
class Cell:
    """One value of a table: ``raw`` in CSV, ``fmt(raw)`` in the text formats (e.g. ``Cell(37683, human_bytes)``)."""

    raw: Any
    fmt: Callable[[Any], str] = str

    def __str__(self) -> str:
        return "-" if self.raw is None else self.fmt(self.raw)


@dataclass
class Table:
    """Headers and rows of raw values; ``formats`` maps a column index to the formatter the text formats show
    it with (a :class:`Cell` carries its own). CSV gets the raw values, None as an empty field."""

    headers: Sequence[str]
    rows: list[Sequence[Any]]
    title: str | None = None
    primary: bool = False
    floatfmt: str = "g"
    notes: list[str] = field(default_factory=list)
    formats: dict = field(default_factory=dict)

    def raw_rows(self) -> list[list]:
        return [[v.raw if isinstance(v, Cell) else v for v in row] for row in self.rows]

    def text_rows(self) -> list[list]:
        """The rows as the text formats show them (None stays None: tabulate prints it as ``-``)."""
        return [[_text(v, self.formats.get(i)) for i, v in enumerate(row)] for row in self.rows]

    def numeric_columns(self) -> list[bool]:
        """Columns whose raw values are all numbers (None aside): right-aligned in LaTeX."""
        raw = self.raw_rows()
        width = max((len(r) for r in raw), default=len(self.headers))
        return [any(_is_number(r[i]) for r in raw if i < len(r))
                and all(_is_number(r[i]) or r[i] is None for r in raw if i < len(r)) for i in range(width)]


def _text(value, formatter):
    if isinstance(value, Cell):
        value, formatter = value.raw, value.fmt
    if value is None:
        return None
    return formatter(value) if formatter is not None else str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values only (:func:`ckpttool.plain.plain`): tuples become lists, numpy scalars numbers,
    non-finite floats strings."""
    from ckpttool.plain import plain

    return plain(obj, finite=True, max_depth=1000)


def render_json(result: dict) -> str:
    return json.dumps(to_jsonable(result), indent=2, ensure_ascii=False)


def render_tables(tables: Sequence[Table], fmt: str) -> str:
    if fmt == "csv":
        chosen = [t for t in tables if t.primary] or list(tables[:1])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for t in chosen:
            writer.writerow(t.headers)
            writer.writerows([["" if v is None else v for v in row] for row in t.raw_rows()])
        return buf.getvalue().rstrip("\n")
    parts = []
    for t in tables:
        block = [_title(t.title, fmt)] if t.title else []
        if t.rows or t.headers:
            block.append(_tabulate(t, fmt) if t.rows else "(none)")
        block.extend(_note(n, fmt) for n in t.notes)
        parts.append("\n".join(block))
    return "\n\n".join(parts)


def _tabulate(t: Table, fmt: str) -> str:
    """table and markdown exactly as they always looked (every column left-aligned); in LaTeX (booktabs) and the
    other tabulate formats numeric columns are right-aligned."""
    from tabulate import tabulate

    align = None
    if fmt not in ("table", "markdown"):
        align = ["right" if numeric else "left" for numeric in t.numeric_columns()]
    return tabulate(t.text_rows(), headers=list(t.headers) if any(t.headers) else (),
                    tablefmt=_TABULATE_FMT.get(fmt, fmt), floatfmt=t.floatfmt, disable_numparse=True,
                    missingval="-", colalign=align)


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


def pct(x: Any) -> str:
    """A metric in percent as papers print it: two decimals (``93.33``), ``-`` for none."""
    return "-" if x is None else f"{x:.2f}"


def signed(x: Any) -> str:
    """A difference in points with its sign (``+0.25``), ``-`` for none."""
    return "-" if x is None else f"{x:+.2f}"


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
