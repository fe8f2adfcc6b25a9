"""Running ckpt commands in-process for tests (Click's CliRunner): exit code, stdout and stderr apart."""
from __future__ import annotations

import json

from click.testing import CliRunner

from ckpttool.cli.main import cli


def invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def runs_json(*args):
    """`ckpt runs ARGS --format json`, which must succeed, as one parsed object."""
    code, out, err = invoke("runs", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)
