"""Options and error handling shared by every command (defined once, like sqlite-utils' output options)."""
from __future__ import annotations

import functools
import sys
import traceback

import click

from ckpttool.errors import CheckFailed, CkptError
from ckpttool.report import progress
from ckpttool.report.output import FORMATS, emit, format_names, library_output_to_stderr


class FormatType(click.ParamType):
    """``--format``: one of ours or any tabulate format name (like sqlite-utils' ``--fmt``)."""

    name = "format"

    def convert(self, value, param, ctx):
        if value in FORMATS or value in format_names():   # tabulate imported only for its own names
            return value
        self.fail(f"{value!r} is not {', '.join(FORMATS)} or a tabulate format "
                  f"({', '.join(format_names()[len(FORMATS):])})", param, ctx)


def output_options(fn):
    """Adds --format/--quiet/--debug and turns errors into exit codes: CkptError -> 2, CheckFailed -> 1."""

    @click.option("--format", "fmt", type=FormatType(), default="table", show_default=True,
                  metavar="[" + "|".join(FORMATS) + "|TABULATE-FORMAT]",
                  help="Output format; json prints exactly one JSON object on stdout; csv the raw values; "
                       "any tabulate format name (grid, rst, html, tsv, ...) works too.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bars or log lines on stderr.")
    @click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
    @click.option("--allow-global", "allow_globals", multiple=True, metavar="MODULE.NAME",
                  help="Treat this global as allow-listed data, like torch's add_safe_globals (repeatable; also "
                       "CKPT_ALLOW_GLOBALS=a.B,c.D).")
    @click.option("--strict", is_flag=True, help="Refuse files that name classes outside the allow-list "
                                                 "(verdict 'not verified'), not only those that would run code.")
    @functools.wraps(fn)
    def wrapper(*args, fmt, quiet, debug, allow_globals, strict, **kwargs):
        from ckpttool.io.safety import policy

        progress.set_quiet(quiet)
        try:
            with library_output_to_stderr(quiet), policy(allow_globals, strict):
                return fn(*args, fmt=fmt, **kwargs)
        except CheckFailed as exc:
            if str(exc):
                click.echo(f"ckpt: check failed: {exc}", err=True)
            sys.exit(1)
        except CkptError as exc:
            fail(exc, debug)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo("ckpt: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug or an unforeseen input: still one line unless --debug
            fail(exc, debug, unexpected=True)

    return wrapper


def examples(*lines: str) -> str:
    """A command's ``epilog``: the real examples that end its ``--help`` (kept verbatim by Click)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def fail(exc: BaseException, debug: bool, unexpected: bool = False) -> None:
    if debug:
        traceback.print_exc()
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if unexpected:
        msg = f"unexpected {type(exc).__name__}: {msg} (run with --debug for the traceback)"
    click.echo(f"ckpt: error: {msg}", err=True)
    sys.exit(2)


def finish(result: dict, tables, fmt: str, failed: str | None = None) -> None:
    """Print the result; exit 1 afterwards if a requested check failed (the report is printed first). Under
    torchrun only rank 0 prints (every rank holds the same gathered result)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        emit(result, tables, fmt)
    if failed:
        raise CheckFailed(failed)


class MultiOption(click.Option):
    """An option taking several values after one flag (`--preds a.pkl b.pkl`), repeatable too. Needs a command
    made with ``cls=Command``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)


class OrderedOption(click.Option):
    """A repeatable option whose values are also recorded, with those of the other OrderedOptions of the command,
    in command-line order: ``ctx.meta[ORDER_KEY] = [(param name, value), ...]`` (graft's rules)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)


ORDER_KEY = "ckpttool.option_order"


class Command(click.Command):
    """A Click command that serves :class:`MultiOption` and :class:`OrderedOption` through the public
    ``parse_args`` hook: the argument list is rewritten (``--preds a b`` -> ``--preds a --preds b``) and the order of
    ordered values recorded before Click parses it; Click's parser itself is not touched."""

    def parse_args(self, ctx, args):
        multi = {o for p in self.params if isinstance(p, MultiOption) for o in p.opts}
        ordered = {o: p.name for p in self.params if isinstance(p, OrderedOption) for o in p.opts}
        out, order, i = [], [], 0
        while i < len(args):
            name, eq, inline = args[i].partition("=") if args[i].startswith("--") else (args[i], "", "")
            if args[i] == "--":
                out += args[i:]
                break
            if name in ordered and (eq or i + 1 < len(args)):
                order.append((ordered[name], inline if eq else args[i + 1]))
            if name not in multi:
                out.append(args[i])
                i += 1
                continue
            values, i = ([inline], i + 1) if eq else (args[i + 1:i + 2], i + 2)
            while i < len(args) and not _looks_like_option(args[i]):
                values.append(args[i])
                i += 1
            out += [x for v in values for x in (name, v)] if values else [name]
        ctx.meta[ORDER_KEY] = order
        return super().parse_args(ctx, out)


def _looks_like_option(arg: str) -> bool:
    if not arg.startswith("-") or arg == "-":
        return False
    try:  # a negative number is a value, not an option
        float(arg)
        return False
    except ValueError:
        return True
