"""Docs that cannot drift: the CLI reference is generated from --help; README opens with the two commands."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_help():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "cli.md").read_text() == gen.render(), "docs/cli.md is stale: run `make docs`"


def test_readme_opens_with_the_two_commands_ci_runs():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "```bash" and lines[1].startswith("make demo") and lines[2].startswith("make test")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_docs_links_resolve():
    import re

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_shell_completion_completes_commands_and_options():
    import os
    import subprocess
    import sys

    ckpt = str(Path(sys.executable).parent / "ckpt")
    env = {**os.environ, "_CKPT_COMPLETE": "bash_complete", "COMP_WORDS": "ckpt ins", "COMP_CWORD": "1"}
    out = subprocess.run([ckpt], env=env, capture_output=True, text=True)
    assert "plain,inspect" in out.stdout.splitlines()
    env.update(COMP_WORDS="ckpt inspect --che", COMP_CWORD="2")
    out = subprocess.run([ckpt], env=env, capture_output=True, text=True)
    assert "plain,--check-finite" in out.stdout.splitlines()
