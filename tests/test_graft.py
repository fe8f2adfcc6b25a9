"""`ckpt graft` on the scaled reference layouts: BEVFusion det → det+map+task_gca, ImageNet ResNet-50 → KAIST
two-stream, mit-han-lab → mmdet3d 1.x names; output, provenance, --fail-on, --init, and the Python API."""
from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from ckpttool.cli.main import cli
from ckpttool.io import load
from tests.support import fixtures as fx
from tests.support import graft_fixtures as gf

torch = pytest.importorskip("torch")

DET_MAP_GCA = "tests.support.fixtures:bevfusion_det_map_gca_model"
RULES_FILE = fx.REPO_ROOT / "fixtures" / "rules" / "bevfusion_to_mmdet3d.yaml"


def ckpt(*args):
    result = CliRunner().invoke(cli, ["graft", *map(str, args)])
    return result


def as_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def layout(fixtures_dir, manifest, name):
    return fixtures_dir / manifest["layouts"]["layouts"][name]["path"]


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def out_tensors(path) -> dict:
    return {k: t.to_torch() for k, t in load(path).state_dict().items()}


@pytest.fixture(scope="module")
def det(fixtures_dir, manifest):
    return layout(fixtures_dir, manifest, "bevfusion_det")


@pytest.fixture(scope="module")
def scenario1(det, tmp_path_factory):
    out = tmp_path_factory.mktemp("graft1") / "det_map_gca.pth"
    result = as_json(ckpt(det, "--into", DET_MAP_GCA, "-o", out, "--format", "json"))
    return result, out


def test_bevfusion_det_into_det_map_gca_reports_exactly_the_new_modules(scenario1, manifest):
    r, out = scenario1
    det_entries = fx.scaled_shapes("bevfusion_det")
    gca_entries = fx.scaled_shapes("bevfusion_det_map_gca")
    det_keys = {e[0] for e in det_entries}
    new = [e for e in gca_entries if e[0] not in det_keys]
    assert r["new"]["modules"] == ["task_gca.object", "task_gca.map", "heads.map"]
    assert r["new"]["tensors"] == len(new) and r["new"]["params"] == sum(numel(e[1]) for e in new)
    assert r["loaded"] == {"tensors": len(det_entries), "params": manifest["layouts"]["layouts"]["bevfusion_det"]
                           ["summary"]["numel"], "percent": pytest.approx(100 * r["loaded"]["params"] /
                                                                           r["target"]["params"])}
    assert r["mismatched"] == [] and r["unused"] == []
    assert r["target"]["params"] == manifest["layouts"]["layouts"]["bevfusion_det_map_gca"]["summary"]["numel"]
    rows = {m["name"]: m for m in r["modules"]}
    assert rows["task_gca.object"]["new"] == 2 and rows["task_gca.object"]["init"] == {"default": 2}
    assert rows["heads.object"]["loaded"] == rows["heads.object"]["tensors"]
    assert "from bevfusion_det.pth" in r["summary"] and "new: task_gca.object, task_gca.map, heads.map" in r["summary"]
    full = fx.read_keyfile("bevfusion_det_map_gca")  # the numbers hold for the full-size layout
    assert sum(numel(s) for k, s, _, _ in full if k.startswith("task_gca.object.")) == 131_072


def test_output_holds_source_tensors_bit_for_bit_and_target_init_for_new(scenario1):
    r, out = scenario1
    written = out_tensors(out)
    source = fx.layout_state_dict("bevfusion_det")
    init = fx.bevfusion_det_map_gca_model().state_dict()
    assert list(written) == list(init)  # the target's key order
    for key, value in written.items():
        expected = source.get(key, init[key])
        assert value.dtype == expected.dtype and torch.equal(value, expected), key
    assert r["output"]["tensors"] == len(init)
    assert "loads with strict=True into the target" in r["output"]["verified"]


def test_output_is_an_mmengine_load_from_checkpoint_with_provenance(scenario1, det):
    from mmengine.runner.checkpoint import load_checkpoint

    r, out = scenario1
    model = fx.bevfusion_det_map_gca_model()
    ck = load_checkpoint(model, str(out), map_location="cpu", strict=True)  # torch.load(weights_only=True) inside
    assert set(ck) == {"meta", "state_dict"}  # no optimizer / message_hub carried
    meta = ck["meta"]
    assert meta["epoch"] == 12 and meta["layout"] == "bevfusion_det"  # the source's meta
    src = meta["graft"]["sources"][0]
    assert src["sha256"] == hashlib.sha256(det.read_bytes()).hexdigest() and src["path"] == str(det.resolve())
    assert meta["graft"]["report"]["new"]["modules"] == r["new"]["modules"]
    assert torch.equal(model.state_dict()["fuser.0.weight"], fx.layout_state_dict("bevfusion_det")["fuser.0.weight"])


def test_template_target_and_init_rules(det, fixtures_dir, manifest, tmp_path):
    template = layout(fixtures_dir, manifest, "bevfusion_det_map_gca")
    out = tmp_path / "gca.safetensors"
    r = as_json(ckpt(det, "--into", template, "-o", out, "--format", "json",
                     "--init", "task_gca=zeros", "--init", r"task_gca\.map=copy:task_gca.object"))
    w = out_tensors(out)
    tmpl = fx.layout_state_dict("bevfusion_det_map_gca")
    assert load(out).format == "safetensors"
    for key in w:
        if key.startswith("task_gca."):
            assert not w[key].any(), key
        elif key.startswith("heads.map."):
            assert torch.equal(w[key], tmpl[key]), key
    assert r["new"]["init"] == {"zeros": 2, "copy": 2, "default": r["new"]["tensors"] - 4}
    assert [x["matched"] for x in r["rules"]] == [4, 2]


def test_init_copy_gives_map_the_same_start_as_object(det, tmp_path):
    out = tmp_path / "copy.pth"
    r = as_json(ckpt(det, "--into", DET_MAP_GCA, "-o", out, "--format", "json",
                     "--init", "task_gca.map=copy:task_gca.object", "--fail-on", "unused,mismatched"))
    w = out_tensors(out)
    for key in w:
        if key.startswith("task_gca.map."):
            assert torch.equal(w[key], w[key.replace(".map.", ".object.")]), key
    assert r["new"]["without_init_rule"] == r["new"]["tensors"] - 2


def test_fail_on_new_exits_1_and_writes_nothing(det, tmp_path):
    out = tmp_path / "x.pth"
    res = ckpt(det, "--into", DET_MAP_GCA, "-o", out, "--fail-on", "new", "--init", "task_gca=zeros", "-q")
    assert res.exit_code == 1 and not out.exists()
    assert res.stderr.strip() == "ckpt: check failed: 14 new not covered by a rule (--fail-on)".replace(
        "14", str(sum(1 for k, *_ in fx.scaled_shapes("bevfusion_det_map_gca") if k.startswith("heads.map."))))
    assert "heads.map" in res.stdout


def test_dry_run_prints_the_report_and_writes_nothing(det, tmp_path):
    out = tmp_path / "dry.pth"
    res = ckpt(det, "--into", DET_MAP_GCA, "-o", out, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "task_gca.object" in res.stdout and "nothing (--dry-run)" in res.stdout
    assert not out.exists()


def test_kaist_two_stream_from_one_imagenet_resnet50(tmp_path):
    src = tmp_path / "resnet50_imagenet.pth"
    source = gf.write_resnet50(src)
    out = tmp_path / "kaist.pth"
    r = as_json(ckpt(src, "--into", "tests.support.fixtures:kaist_frcnn_model", "-o", out, "--format", "json",
                     "--drop", r"^fc\.", "--copy", "=backbone_vis.", "--copy", "=backbone_lwir.", "--depth", "1",
                     "--fail-on", "unused"))
    target_keys = [k for k, *_ in fx.scaled_shapes("kaist_frcnn")]
    backbone = [k for k in target_keys if k.startswith(("backbone_vis.", "backbone_lwir."))]
    assert r["loaded"]["tensors"] == len(backbone) == 2 * (len(source) - 2)
    assert r["new"]["modules"] == list(dict.fromkeys(k.split(".")[0] for k in target_keys if k not in backbone))
    assert [(u["key"], u["dropped"]) for u in r["unused"]] == [("fc.weight", True), ("fc.bias", True)]
    w = out_tensors(out)
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(w["backbone_vis." + key], value) and torch.equal(w["backbone_lwir." + key], value)


def test_bevfusion_to_mmdet3d_names_with_the_rules_file(det, fixtures_dir, manifest, tmp_path):
    target = layout(fixtures_dir, manifest, "bevfusion_det_mmdet3d1x_names")
    out = tmp_path / "mmdet3d.pth"
    r = as_json(ckpt(det, "--into", target, "--rules", RULES_FILE, "-o", out, "--format", "json",
                     "--fail-on", "new,mismatched,unused"))
    assert r["new"]["tensors"] == 0 and r["unused"] == [] and r["mismatched"] == []
    assert all(x["matched"] > 0 for x in r["rules"]) and r["on_shape_mismatch"] == "error"
    w = out_tensors(out)
    source = fx.layout_state_dict("bevfusion_det")
    names = [k for k, *_ in fx.scaled_shapes("bevfusion_det_mmdet3d1x_names")]
    assert list(w) == names
    for (old, value), new in zip(source.items(), names):  # same tensors, same order, new names
        assert torch.equal(w[new], value), (old, new)


def test_ddp_prefix_is_stripped_automatically(fixtures_dir, manifest, tmp_path):
    files = manifest["formats"]["files"]
    r = as_json(ckpt(fixtures_dir / files["ddp"]["path"], "--into", fixtures_dir / files["zip"]["path"],
                     "--dry-run", "--format", "json"))
    assert r["source"][0]["stripped_prefix"] == "module."
    assert r["new"]["tensors"] == 0 and r["loaded"]["tensors"] == len(manifest["formats"]["small"]["entries"])


def test_python_api_returns_a_state_dict_that_loads_strictly(det):
    import ckpttool

    sd, report = ckpttool.graft(det, DET_MAP_GCA, [{"init": "task_gca=zeros"}])
    model = fx.bevfusion_det_map_gca_model()
    model.load_state_dict(sd, strict=True)
    assert report["output"] is None and report["new"]["init"]["zeros"] == 4
    assert "loads with strict=True into the target" in report["verified"]
    assert torch.equal(sd["fuser.0.weight"], fx.layout_state_dict("bevfusion_det")["fuser.0.weight"])


def test_ema_section_keys_table_and_unmatched_rule_warning(fixtures_dir, manifest):
    run = manifest["mmengine"]["runs"]["sgd"]
    path = fixtures_dir / run["path"]
    res = ckpt(path, "--into", path, "--section", "ema_state_dict", "--dry-run", "--keys", "--drop", "^nothing",
               "--fail-on", "new,mismatched,unused")
    assert res.exit_code == 0, res.output
    assert res.stderr.strip().endswith("ckpt: warning: rule --drop '^nothing' matched nothing")
    r = as_json(ckpt(path, "--into", path, "--section", "ema_state_dict", "--dry-run", "--keys", "--format", "json"))
    assert r["source"][0]["stripped_prefix"] == "module." and r["loaded"]["tensors"] == len(run["state_dict_keys"])
    assert [k["key"] for k in r["keys"]] == run["state_dict_keys"]
    assert {k["status"] for k in r["keys"]} == {"loaded"}
    for key in run["state_dict_keys"]:
        assert f"\n{key} " in res.stdout  # one table row per tensor


def test_a_factory_outside_the_working_directory_is_found_with_project_root(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (project / "ckpt_graft_factory_mod.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))\n")
    src = tmp_path / "src.pth"
    torch.save({"0.weight": torch.ones(2, 3), "0.bias": torch.zeros(2)}, src)
    monkeypatch.chdir(elsewhere)
    spec = "ckpt_graft_factory_mod:build"
    missing = ckpt(src, "--into", spec, "--dry-run")
    assert missing.exit_code == 2 and "cannot import the factory module" in missing.stderr
    r = as_json(ckpt(src, "--into", spec, "--project-root", project, "--dry-run", "--format", "json"))
    assert r["loaded"]["tensors"] == 2 and r["new"]["modules"] == ["1"]
    bad = ckpt(src, "--into", spec, "--project-root", tmp_path / "nowhere", "--dry-run")
    assert bad.exit_code == 2 and "--project-root" in bad.stderr and bad.stderr.count("\n") == 1
