"""The ``ckpt`` group. Commands are imported lazily so that ``ckpt inspect`` never pays for another command."""
from __future__ import annotations

import importlib
import sys

import click

from ckpttool import __version__

# name -> "module:function"; the order here is the order in --help.
COMMANDS = {
    "inspect": "ckpttool.cli.inspect_cmd:inspect_cmd",
    "diff": "ckpttool.cli.diff_cmd:diff_cmd",
    "graft": "ckpttool.cli.graft_cmd:graft_cmd",
    "average": "ckpttool.cli.average_cmd:average_cmd",
    "publish": "ckpttool.cli.publish_cmd:publish_cmd",
    "runs": "ckpttool.cli.runs_cmd:runs_cmd",
    "eval": "ckpttool.cli.eval_cmd:eval_cmd",
}


class LazyGroup(click.Group):
    def main(self, args=None, prog_name=None, **kwargs):
        """Usage errors (a bad option value, a missing argument) are one line on stderr and exit 2, like every
        other input error; Click's multi-line usage block is left to --help."""
        kwargs["standalone_mode"] = False
        try:
            return super().main(args, prog_name, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "ckpt"
            click.echo(f"ckpt: error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"ckpt: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("ckpt: aborted", err=True)
            sys.exit(1)

    def list_commands(self, ctx):
        return [name for name, target in COMMANDS.items() if _available(target)]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


def _available(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ckpt")
def cli():
    """Safe, verified tools for PyTorch / OpenMMLab checkpoints.

    Nothing stored in a checkpoint is executed unless you pass --trust.
    Shell completion (bash): eval "$(_CKPT_COMPLETE=bash_source ckpt)"  (zsh: zsh_source, fish: fish_source).
    """
