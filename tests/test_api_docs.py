"""docs/api.md: every Python snippet runs, and prints what the page says it prints (the ``# →`` lines).

Snippets that need files made by hand in docs/recipes.md (``/tmp/ckdocs/toy``, ``/tmp/ckdocs/ntu``: a toy work_dir
and a trained tiny PoseC3D) are listed in NEEDS_RECIPES and checked only where those files exist; writes to
``/tmp/ckdocs/apidoc`` go to a temporary folder."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_RECIPES = ("/tmp/ckdocs/toy/", "/tmp/ckdocs/ntu/")


def _snippets():
    text = (ROOT / "docs" / "api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _expected(code: str) -> list[str]:
    return [line.split("# → ", 1)[1] if "# → " in line else "" for line in code.splitlines()
            if line.lstrip().startswith("# →")]


def _same(got: str, want: str) -> bool:
    if want.endswith("…"):  # the page shortens long lines
        return got.startswith(want[:-1].rstrip())
    return got == want


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_api_snippet_prints_what_the_page_says(index, fixtures_dir, tmp_path, monkeypatch):
    code = _snippets()[index]
    needs = [p for p in NEEDS_RECIPES if p in code]
    if needs and not all(Path(p).exists() for p in needs):
        pytest.skip(f"needs {', '.join(needs)} made as docs/recipes.md describes")
    monkeypatch.chdir(ROOT)
    (tmp_path / "apidoc").mkdir()
    subst = {"/tmp/ckdocs/apidoc": str(tmp_path / "apidoc")}
    if Path(fixtures_dir).resolve() != (ROOT / "fixtures" / "generated").resolve():  # $CKPT_FIXTURES_DIR
        subst["fixtures/generated/"] = f"{fixtures_dir}/"
    run = code
    for a, b in subst.items():
        run = run.replace(a, b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(run, f"docs/api.md snippet {index + 1}", "exec"), {"__name__": "__apidoc__"})
    got = out.getvalue().splitlines()
    for a, b in subst.items():
        got = [g.replace(b, a) for g in got]
    want = _expected(code)
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert _same(g, w), f"printed {g!r}, the page says {w!r}"
