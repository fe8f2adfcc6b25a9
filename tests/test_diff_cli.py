"""`ckpt diff` through the CLI: JSON contract, tables, --fail-on gate, bad input (one line, exit 2), no torch."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli

CONTRACT = {"a", "b", "only_in_a", "only_in_b", "shape_mismatch", "dtype_mismatch", "modules", "identical_tensors",
            "nonfinite_in_b", "meta"}
MODULE_KEYS = {"name", "tensors", "changed", "rel_l2", "max_abs", "cosine"}


def run(*args):
    return CliRunner().invoke(cli, ["diff", *map(str, args)])


def pair(fixtures_dir, manifest, name):
    p = manifest["diff"]["pairs"][name]
    return fixtures_dir / p["base"], fixtures_dir / p["path"], p["edits"]


def test_json_contract(fixtures_dir, manifest):
    a, b, e = pair(fixtures_dir, manifest, "combined")
    out = run(a, b, "--format", "json")
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    assert CONTRACT <= set(r) and "config" not in r
    assert all(MODULE_KEYS <= set(m) for m in r["modules"])
    assert all({"key", "a", "b"} <= set(m) for m in r["shape_mismatch"] + r["dtype_mismatch"])
    assert r["only_in_b"] == e["added"] and [m["key"] for m in r["shape_mismatch"]] == list(e["reshaped"])
    assert r["modules"][0]["name"] == e["nan_branch"]
    run_ = manifest["diff"]["runner"]
    r = json.loads(run(fixtures_dir / run_["a"]["path"], fixtures_dir / run_["b"]["path"], "--config",
                       "--format", "json").stdout)
    assert {"key", "a", "b"} <= set(r["config"][0]) and len(r["config"]) >= len(run_["cfg_diff"])


@pytest.mark.parametrize("name,kinds,code", [
    ("identical", "keys,shapes,dtypes,values,nonfinite", 0), ("scaled", "values", 1), ("scaled", "keys,shapes", 0),
    ("added_key", "keys", 1), ("added_key", "values", 0), ("reshaped", "shapes", 1), ("fp16", "dtypes", 1),
    ("nan", "nonfinite", 1), ("nan", "keys,shapes,dtypes", 0)])
def test_fail_on_is_a_gate(fixtures_dir, manifest, name, kinds, code):
    a, b, _ = pair(fixtures_dir, manifest, name)
    out = run(a, b, "--fail-on", kinds, "--format", "json")
    assert out.exit_code == code, out.output
    json.loads(out.stdout)  # the report is printed either way
    assert ("check failed" in out.stderr) is bool(code)


def test_fail_on_config_turns_config_on(fixtures_dir, manifest):
    run_ = manifest["diff"]["runner"]
    a, b = fixtures_dir / run_["a"]["path"], fixtures_dir / run_["b"]["path"]
    out = run(a, b, "--fail-on", "config")
    assert out.exit_code == 1 and "Config differences" in out.stdout and "model.loss_weights" in out.stdout
    assert run(a, a, "--fail-on", "config,keys,shapes").exit_code == 0


def test_table_sections_and_ranking(fixtures_dir, manifest):
    a, b, e = pair(fixtures_dir, manifest, "combined")
    out = run(a, b, "--depth", "1")
    assert out.exit_code == 0
    text = out.stdout
    for title in ("Structure", "Shape mismatches", "Dtype mismatches", "Modules (depth 1)", "Changed tensors"):
        assert title in text
    ranking = text.split("Modules (depth 1)")[1].split("Changed tensors")[0]
    tops = [line.split()[0] for line in ranking.splitlines()[3:] if line.strip()]
    assert tops[0] == e["nan_branch"].split(".")[0] and tops[1] == e["scaled"]["module"]


def test_csv_is_the_module_ranking(fixtures_dir, manifest):
    a, b, _ = pair(fixtures_dir, manifest, "scaled")
    r = json.loads(run(a, b, "--format", "json").stdout)
    rows = list(csv.reader(io.StringIO(run(a, b, "--format", "csv").stdout)))
    assert rows[0][:3] == ["module", "tensors", "changed"]
    assert [row[0] for row in rows[1:]] == [m["name"] for m in r["modules"]]


@pytest.mark.parametrize("fmt,marker", [("markdown", "| module"), ("latex", "\\begin{tabular}")])
def test_other_formats(fixtures_dir, manifest, fmt, marker):
    a, b, _ = pair(fixtures_dir, manifest, "scaled")
    out = run(a, b, "--format", fmt)
    assert out.exit_code == 0 and marker in out.stdout


def test_section_and_map_options(fixtures_dir, manifest):
    path = fixtures_dir / manifest["diff"]["runner"]["a"]["path"]
    r = json.loads(run(path, path, "--section", "ema_state_dict", "--format", "json").stdout)
    assert r["a"]["section"] == r["b"]["section"] == "ema_state_dict" and r["modules"]
    assert all(m["changed"] == 0 for m in r["modules"])
    base = fixtures_dir / manifest["diff"]["base"]["path"]
    r = json.loads(run(base, base, "--map", r"^neck\.=nk.", r"^head\.=hd.", "--format", "json").stdout)
    assert all(k.startswith(("nk.", "hd.")) for k in r["only_in_b"]) and len(r["only_in_a"]) == len(r["only_in_b"])


@pytest.mark.parametrize("args,message", [
    (["missing.pth", "B"], "no such file"), (["B", "missing.pth"], "no such file"),
    (["random_bytes", "B"], ""), (["B", "truncated"], ""), (["empty", "B"], ""),
    (["B", "B", "--section-b", "nope"], "no section"), (["B", "B", "--map", "(=x"], "--map"),
    (["B", "B", "--fail-on", "bogus"], "--fail-on"), (["B", "B", "--atol", "-1"], "--atol"),
    (["B", "B", "--config-a", "missing.py"], "missing.py")])
def test_bad_input_is_one_line_and_exit_2(fixtures_dir, manifest, args, message):
    files = manifest["formats"]["files"]
    args = [str(fixtures_dir / files["zip"]["path"]) if x == "B" else
            str(fixtures_dir / files[x]["path"]) if x in files else x for x in args]
    out = run(*args)
    assert out.exit_code == 2 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.output and out.stdout == ""


@pytest.mark.parametrize("stem", ["os_system", "builtins_eval_legacy", "plain_pickle", "in_meta", "getattr_chain"])
def test_malicious_inputs_are_refused(fixtures_dir, manifest, stem):
    from pathlib import Path

    mal = manifest["malicious"]["files"][stem]
    good = fixtures_dir / manifest["formats"]["files"]["zip"]["path"]
    for args in ([fixtures_dir / mal["path"], good], [good, fixtures_dir / mal["path"]]):
        out = run(*args)
        assert out.exit_code == 2 and "refusing" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not Path(mal["sentinel"]).exists()


def test_diff_imports_neither_torch_nor_mmengine(fixtures_dir, manifest):
    run_ = manifest["diff"]["runner"]
    a, b = fixtures_dir / run_["a"]["path"], fixtures_dir / run_["b"]["path"]
    code = ("import sys; from click.testing import CliRunner; from ckpttool.cli.main import cli; "
            f"r = CliRunner().invoke(cli, ['diff', {str(a)!r}, {str(b)!r}, '--config']); "
            "assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules and 'mmengine' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_keys_lists_every_changed_tensor(fixtures_dir, manifest):
    from tests.test_diff import BEVFUSION_MAP

    layouts = manifest["layouts"]["layouts"]
    a, b = (fixtures_dir / layouts[n]["path"] for n in ("bevfusion_det", "bevfusion_det_mmdet3d1x_names"))
    maps = [x for rule in BEVFUSION_MAP for x in ("--map", rule)]
    r = json.loads(run(a, b, *maps, "--format", "json").stdout)
    n = len(r["changed_tensors"])
    assert n > 10 and r["only_in_a"] == r["only_in_b"] == []
    short, full = run(a, b, *maps).stdout, run(a, b, *maps, "--keys").stdout
    assert f"… {n - 10} more (--keys lists all)" in short and "more (--keys" not in full
    assert all(t["key"] in full for t in r["changed_tensors"])
    assert sum(t["key"] in short.split("Changed tensors")[1] for t in r["changed_tensors"]) == 10
