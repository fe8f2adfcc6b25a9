"""`ckpt inspect` through the CLI: the JSON contract, formats, options, exit codes, and no torch import."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from ckpttool.cli.main import cli

CONTRACT = {"path", "format", "file_bytes", "layout", "meta", "weights_key", "num_tensors", "total_params",
            "total_bytes", "modules", "sections", "foreign_globals"}


def run(*args):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


def test_json_contract_and_counts_on_a_runner_checkpoint(fixtures_dir, manifest):
    info = manifest["mmengine"]["runs"]["adamw"]
    out = run(fixtures_dir / info["path"], "--format", "json")
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    assert CONTRACT <= set(r)
    assert r["layout"] == "mmengine" and r["weights_key"] == "state_dict"
    sd = torch.load(fixtures_dir / info["path"], weights_only=False)["state_dict"]  # our own fixture
    expected = {}
    for key, t in sd.items():
        mod = ".".join(key.split(".")[:2])
        expected[mod] = expected.get(mod, 0) + t.numel()
    assert {m["name"]: m["params"] for m in r["modules"]} == expected
    assert r["total_params"] == info["summary"]["numel"]
    assert r["optimizer"]["kind"] == "AdamW"
    assert r["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(info["weight_decay"])
    assert r["schedulers"][0]["kind"] == "MultiStepLR"
    assert set(info["message_hub_scalar_keys"]) <= set(r["scalars"])
    assert r["ema"]["section"] == "ema_state_dict" and r["ema"]["steps"] == info["ema"]["steps"]


def test_sgd_optimizer_facts(fixtures_dir, manifest):
    info = manifest["mmengine"]["runs"]["sgd"]
    r = json.loads(run(fixtures_dir / info["path"], "--format", "json").stdout)
    g = r["optimizer"]["param_groups"][0]
    assert r["optimizer"]["kind"] == "SGD (momentum)"
    assert g["momentum"] == 0.9 and g["weight_decay"] == pytest.approx(info["weight_decay"])
    assert r["meta"]["epoch"] == info["epoch"] and r["meta"]["seed"] == info["seed"]


def test_table_shows_the_parts_at_default_depth(fixtures_dir):
    out = run(fixtures_dir / "layouts" / "rgbpose.pth")
    assert out.exit_code == 0
    for part in ("backbone.rgb_path", "backbone.pose_path", "cls_head.fc_rgb", "total"):
        assert part in out.stdout


def test_stats_match_torch_and_flag_the_nan_module(fixtures_dir, manifest):
    info = manifest["formats"]["files"]["nan_inf"]
    path = fixtures_dir / info["path"]
    r = json.loads(run(path, "--stats", "--depth", "1", "--format", "json").stdout)
    rows = {m["name"]: m for m in r["modules"]}
    bad = info["nonfinite"]
    assert rows[bad["module"]]["nan"] == sum(v["nan"] for v in bad["keys"].values())
    assert rows[bad["module"]]["inf"] == sum(v["posinf"] + v["neginf"] for v in bad["keys"].values())
    assert "non-finite" in rows[bad["module"]]["flags"]
    sd = torch.load(path, weights_only=True)["state_dict"]
    for mod in info["nonfinite"]["finite_modules"]:
        # module values are over floating tensors: integer counters (num_batches_tracked) are not values
        vals = torch.cat([t.double().flatten() for k, t in sd.items() if k.startswith(mod + ".")
                          and t.is_floating_point()])
        assert rows[mod]["l2"] == pytest.approx(vals.norm().item(), rel=1e-5)
        assert rows[mod]["max"] == pytest.approx(vals.max().item())
        assert rows[mod]["nan"] == rows[mod]["inf"] == 0


def test_check_finite_is_a_gate(fixtures_dir, manifest):
    files = manifest["formats"]["files"]
    assert run(fixtures_dir / files["nan_inf"]["path"], "--check-finite").exit_code == 1
    assert run(fixtures_dir / files["zip"]["path"], "--check-finite").exit_code == 0


def test_options_keys_filter_config_section(fixtures_dir, manifest):
    info = manifest["mmengine"]["runs"]["sgd"]
    path = fixtures_dir / info["path"]
    keys = json.loads(run(path, "--keys", "--filter", r"^head\.", "--format", "json").stdout)["keys"]
    assert [k["key"] for k in keys] == [k for k in info["state_dict_keys"] if k.startswith("head.")]
    cfg = run(path, "--config").stdout
    assert all(s in cfg for s in info["cfg_contains"])
    ema = json.loads(run(path, "--section", "ema_state_dict", "--format", "json").stdout)
    assert ema["stripped_prefix"] == "module." and ema["num_tensors"] == len(info["state_dict_keys"])


@pytest.mark.parametrize("fmt,marker", [("markdown", "|"), ("csv", "module,tensors"), ("latex", "\\begin{tabular}"),
                                        ("table", "total")])
def test_output_formats(fixtures_dir, fmt, marker):
    out = run(fixtures_dir / "layouts" / "posec3d.pth", "--format", fmt)
    assert out.exit_code == 0 and marker in out.stdout


@pytest.mark.parametrize("args,message", [(["missing.pth"], "no such file"), (["--filter", "("], "bad --filter"),
                                          (["--section", "nope"], "no section")])
def test_bad_input_is_one_line_and_exit_2(fixtures_dir, args, message):
    if args[0] != "missing.pth":
        args = [str(fixtures_dir / "formats" / "zip.pth"), *args]
    out = run(*args)
    assert out.exit_code == 2 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.output


def test_inspect_never_imports_torch(fixtures_dir, manifest):
    path = fixtures_dir / manifest["mmengine"]["runs"]["sgd"]["path"]
    code = ("import sys; from click.testing import CliRunner; from ckpttool.cli.main import cli; "
            f"r = CliRunner().invoke(cli, ['inspect', {str(path)!r}, '--stats']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules and 'mmengine' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version_help_and_module_entry():
    assert CliRunner().invoke(cli, ["--version"]).output.startswith("ckpt, version")
    out = subprocess.run([sys.executable, "-m", "ckpttool", "inspect", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--check-finite" in out.stdout


@pytest.mark.parametrize("argv", [["inspect"], ["inspect", "x", "--depth", "abc"], ["nope"], ["inspect", "x", "--bogus"]])
def test_usage_errors_are_one_line_exit_2(argv):
    out = CliRunner().invoke(cli, argv)
    assert out.exit_code == 2 and out.stderr.startswith("ckpt: error: ")
    assert len(out.stderr.strip().splitlines()) == 1


def test_one_byte_file_is_a_clean_error(tmp_path):
    p = tmp_path / "one.bin"
    p.write_bytes(b"\x80")
    out = run(p)
    assert out.exit_code == 2 and "not a checkpoint format" in out.stderr and "unexpected" not in out.stderr


def test_trust_says_so_and_keeps_logged_scalars(fixtures_dir, manifest):
    info = manifest["mmengine"]["runs"]["sgd"]
    out = run(fixtures_dir / info["path"], "--trust")
    assert "unpickled for real" in out.stdout
    r = json.loads(run(fixtures_dir / info["path"], "--trust", "--format", "json").stdout)
    assert r["trusted"] and set(info["message_hub_scalar_keys"]) <= set(r["scalars"])


def test_integer_buffers_do_not_make_outliers(fixtures_dir):
    r = json.loads(run(fixtures_dir / "layouts" / "kaist_frcnn.pth", "--stats", "--depth", "3",
                       "--format", "json").stdout)
    assert not [m["name"] for m in r["modules"] if any("siblings" in f for f in m["flags"])]


def test_a_bare_state_dict_is_one_section(fixtures_dir, manifest):
    r = json.loads(run(fixtures_dir / manifest["formats"]["files"]["safetensors"]["path"], "--format", "json").stdout)
    assert list(r["sections"]) == ["(state dict)", "__metadata__"]
