"""Write docs/cli.md from the `--help` of every command (`make docs`); tests/test_docs.py fails when it drifts."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def render() -> str:
    from click.testing import CliRunner

    from ckpttool.cli.main import COMMANDS, cli

    parts = ["# CLI reference", "", "Generated from `--help` by `scripts/gen_cli_docs.py` (`make docs`); do not edit.",
             ""]
    runner = CliRunner()
    for argv in [[]] + [[name] for name in COMMANDS]:
        out = runner.invoke(cli, [*argv, "--help"], prog_name="ckpt", terminal_width=100)
        if out.exit_code != 0:
            raise SystemExit(f"ckpt {' '.join(argv)} --help failed: {out.output}")
        parts += [f"## ckpt {' '.join(argv)}".rstrip(), "", "```", out.output.rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(render())
    print("wrote docs/cli.md")
