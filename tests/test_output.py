"""report.output: tables hold raw values plus formatters (CSV raw, LaTeX right-aligned, any tabulate format)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.report.output import Cell, Table, human_bytes, pct, render_tables

ROOT = Path(__file__).resolve().parents[1]
JOINT = str(ROOT / "fixtures" / "mmaction2-fuse-demo" / "joint.pkl")
BONE = str(ROOT / "fixtures" / "mmaction2-fuse-demo" / "bone.pkl")


def _table():
    return Table(["name", "size", "top-1"], [["a", Cell(37683, human_bytes), 91.6666666], ["b", None, None]],
                 primary=True, formats={2: pct})


def test_csv_has_raw_values_and_the_text_formats_formatted_ones():
    rows = list(csv.reader(io.StringIO(render_tables([_table()], "csv"))))
    assert rows == [["name", "size", "top-1"], ["a", "37683", "91.6666666"], ["b", "", ""]]
    text = render_tables([_table()], "table")
    assert "36.8 KiB" in text and "91.67" in text and "91.666" not in text
    assert text.splitlines()[-1].split() == ["b", "-", "-"]


def test_latex_right_aligns_numeric_columns_with_booktabs_rules():
    text = render_tables([_table()], "latex")
    assert "\\begin{tabular}{lrr}" in text
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text


def test_table_and_markdown_keep_every_column_left_aligned():
    md = render_tables([_table()], "markdown")
    assert md.splitlines()[1].replace(" ", "") == "|--------|----------|---------|"  # github: no alignment marks
    assert md.splitlines()[2].startswith("| a      | 36.8 KiB | 91.67")


def test_any_tabulate_format_name_is_accepted_by_the_cli():
    res = CliRunner().invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--format", "grid"])
    assert res.exit_code == 0 and res.stdout.lstrip().splitlines()[1].startswith("+")
    res = CliRunner().invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--format", "nope"])
    assert res.exit_code == 2 and "tabulate format" in res.stderr


def test_multi_value_options_without_click_internals(tmp_path):
    res = CliRunner().invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, BONE, "--coefficients", "1", "2",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    import json

    assert [r["name"] for r in json.loads(res.stdout)["rows"]][-1].startswith("ensemble(1*joint + 2*bone")
    res = CliRunner().invoke(cli, ["eval", "--task", "ntu60", "--preds", JOINT, "--clips", "1,,3"])
    assert res.exit_code == 2 and "--clips" in res.stderr
