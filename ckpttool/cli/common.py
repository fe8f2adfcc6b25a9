"""Options and error handling shared by every command (defined once, like sqlite-utils' output options)."""
from __future__ import annotations

import functools
import sys
import traceback

import click

from ckpttool.errors import CheckFailed, CkptError
from ckpttool.report import progress
from ckpttool.report.output import FORMATS, emit


def output_options(fn):
    """Adds --format/--quiet/--debug and turns errors into exit codes: CkptError -> 2, CheckFailed -> 1."""

    @click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                  help="Output format; json prints exactly one JSON object on stdout.")
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
            with policy(allow_globals, strict):
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


def fail(exc: BaseException, debug: bool, unexpected: bool = False) -> None:
    if debug:
        traceback.print_exc()
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if unexpected:
        msg = f"unexpected {type(exc).__name__}: {msg} (run with --debug for the traceback)"
    click.echo(f"ckpt: error: {msg}", err=True)
    sys.exit(2)


def finish(result: dict, tables, fmt: str, failed: str | None = None) -> None:
    """Print the result; exit 1 afterwards if a requested check failed (the report is printed first)."""
    emit(result, tables, fmt)
    if failed:
        raise CheckFailed(failed)


class MultiOption(click.Option):
    """An option taking several values after one flag (`--preds a.pkl b.pkl`), repeatable too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)
        self._previous_parser_process = None

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            previous = opt.process

            def process(value, state, previous=previous):
                values = [value]
                while state.rargs and not _looks_like_option(state.rargs[0]):
                    values.append(state.rargs.pop(0))
                for v in values:
                    previous(v, state)

            opt.process = process


def _looks_like_option(arg: str) -> bool:
    if not arg.startswith("-") or arg == "-":
        return False
    try:  # a negative number is a value, not an option
        float(arg)
        return False
    except ValueError:
        return True
