"""`ckpt graft` into real mmdetection3d 1.x models built from configs.

* The seed scenario: a CenterPoint pillar detector (mmdet3d's shipped nuScenes config as `_base_`, shrunk for the
  CPU), trained for one iteration by mmengine's Runner, grafted into the user's project config that subclasses it
  with `task_gca = ModuleDict(object=..., map=...)` and a map head (`custom_imports` + `--project-root`, run from
  another directory): everything trained loads, exactly the new modules are new, the file loads with mmengine's
  `load_checkpoint(strict=True)` and `model.test_step` predicts on synthetic points.
* The BEVFusion rules (fixtures/rules/bevfusion_to_mmdet3d.yaml) against a model built with mmdet3d 1.x
  BEVFusion's module names from mmdet3d / mmdet / mmcv parts (tests/support/mmdet3d_project/bevfusion_project).

Runs in .venv-mmdet3d (the [mmdet3d] extra); scripts/test.sh selects these tests there with `-m mmdet3d`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.support import mmdet3d_fixtures as m3d
from tests.support.cli import invoke

pytestmark = [pytest.mark.mmdet3d, pytest.mark.slow]
NEW = ("task_gca.object", "task_gca.map", "map_head.classifier")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)   # the CI machine has 2 cores
    yield
    torch.set_num_threads(old)


def graft_json(*args):
    code, out, err = invoke("graft", "-q", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out), err


def written(path) -> dict:
    from ckpttool.io import load

    return {k: t.to_torch() for k, t in load(path).state_dict().items()}


def cpu_target(config=m3d.GCA_CONFIG, seed=0, options=None):
    from ckpttool.surgery.target import resolve_target

    return resolve_target(str(config), options, seed=seed, build="cpu", project_root=m3d.PROJECT)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """iter_1.pth written by mmengine's Runner (in its own process: the Runner seeds every generator)."""
    work = tmp_path_factory.mktemp("centerpoint_run")
    proc = subprocess.run([sys.executable, "-m", "tests.support.mmdet3d_fixtures", str(work)], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "iter_1.pth"


@pytest.fixture(scope="module")
def seeded(source, tmp_path_factory):
    """The seed scenario's graft, from another directory than the project's (custom_imports via --project-root)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    out = elsewhere / "init.pth"
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        r, err = graft_json(source, "--into", m3d.GCA_CONFIG, "--project-root", m3d.PROJECT, "-o", out)
    finally:
        os.chdir(cwd)
    return r, out


def test_custom_imports_need_the_project_root(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(m3d.PROJECT)])
    sys.modules.pop("gca_project", None)
    code, out, err = invoke("graft", source, "--into", m3d.GCA_CONFIG, "--dry-run")
    assert code == 2 and out == "" and "--project-root" in err and err.count("\n") == 1


def test_everything_trained_loads_and_exactly_the_new_modules_are_new(seeded, source):
    from ckpttool.io import load

    r, out = seeded
    trained = load(source).state_dict()
    assert r["target"]["class"] == "CenterPointMapGCA" and r["target"]["build"] == "meta"
    assert r["loaded"]["tensors"] == len(trained) and r["unused"] == [] and r["mismatched"] == []
    assert r["new"]["modules"] == list(NEW)
    keys = written(out)
    new = [k for k in keys if k.startswith(NEW)]
    assert r["new"]["tensors"] == len(new) == len(keys) - len(trained)
    assert r["target"]["materialised"] == len(new)
    assert 0 < r["new"]["params"] < 0.1 * r["target"]["params"]
    for key, value in trained.items():
        assert keys[key].equal(value.to_torch()), key
    assert any("not carried" in n for n in r["notes"])  # the Runner's optimizer / message_hub


def test_output_loads_with_mmengine_and_the_model_predicts(seeded, source):
    import pickle

    import torch
    from mmengine.runner.checkpoint import load_checkpoint

    _, out = seeded
    torch.load(out, weights_only=True)  # plain weights: torch >= 2.6's default loader reads it
    model = cpu_target(seed=7).model
    with pytest.raises(pickle.UnpicklingError, match="HistoryBuffer"):  # unlike the Runner's own checkpoint
        load_checkpoint(model, str(source), map_location="cpu", strict=True)
    load_checkpoint(model, str(out), map_location="cpu", strict=True)
    w = written(out)
    assert all(v.equal(w[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        results = model.test_step(dict(inputs=dict(points=[m3d.points(seed=3)]), data_samples=[m3d.sample()]))
    pred = results[0].pred_instances_3d
    assert len(pred.scores_3d) > 0 and pred.bboxes_3d.tensor.shape[1] == 9
    assert torch.isfinite(pred.bboxes_3d.tensor).all()
    assert results[0].pred_map.shape[0] == 6 and ((results[0].pred_map >= 0) & (results[0].pred_map <= 1)).all()


def test_new_modules_hold_their_own_init_weights(seeded, source, tmp_path):
    """Built on meta, only the new modules are real: they hold what a CPU build's init_weights gives them under the
    same seed (Kaiming from the modules' init_cfg, the map classifier's bias prior), and the whole file equals a
    graft into a target built on the CPU."""
    import torch

    r, out = seeded
    w = written(out)
    init = cpu_target(seed=0)
    for key in (k for k in w if k.startswith(NEW)):
        assert torch.equal(w[key], init.initial(key)), key
    assert torch.equal(w["map_head.classifier.6.bias"], torch.full((6,), -2.19))
    gca = w["task_gca.object.channel_mlp.0.weight"]
    assert abs(gca.std().item() - (2 / gca[0].numel()) ** 0.5) < 0.3 * (2 / gca[0].numel()) ** 0.5  # Kaiming fan_in
    r_cpu, _ = graft_json(source, "--into", m3d.GCA_CONFIG, "--project-root", m3d.PROJECT, "--build", "cpu",
                          "-o", tmp_path / "cpu.pth")
    assert "build" not in r_cpu["target"]
    cpu = written(tmp_path / "cpu.pth")
    assert list(cpu) == list(w) and all(torch.equal(cpu[k], w[k]) for k in w)


def test_the_map_gca_can_start_as_a_copy_of_the_object_gca(source, tmp_path):
    """docs/graft.md's example on the mmdet3d target: declared inits make `--fail-on new` pass."""
    import torch

    out = tmp_path / "copy.pth"
    r, _ = graft_json(source, "--into", m3d.GCA_CONFIG, "--project-root", m3d.PROJECT, "--fail-on", "new",
                      "--init", "task_gca.object=default", "--init", "task_gca.map=copy:task_gca.object",
                      "--init", "map_head=default", "-o", out)
    assert r["new"]["without_init_rule"] == 0 and r["new"]["init"] == {"default": 16, "copy": 2}
    w = written(out)
    for name in ("channel_mlp.0.weight", "channel_mlp.2.weight"):
        assert torch.equal(w[f"task_gca.map.{name}"], w[f"task_gca.object.{name}"])


# --- the mit-han-lab BEVFusion -> mmdet3d 1.x rules against an mmdet3d build ----------------------------------
RULES = REPO_ROOT / "fixtures" / "rules" / "bevfusion_to_mmdet3d.yaml"


def plan_from_published_det(config):
    """The target `config` built on meta, and graft's plan (names and shapes only) from the published mit-han-lab
    BEVFusion det layout (fixtures/keys/bevfusion_det.txt, 40.8M) through the rules file."""
    from ckpttool.surgery.rules import collect_rules, make_plan
    from ckpttool.surgery.target import resolve_target
    from tests.support import fixtures as fx

    target = resolve_target(str(config), build="meta", project_root=m3d.PROJECT)
    source = {k: (shape, dtype) for k, shape, dtype, _ in fx.read_keyfile("bevfusion_det")}
    rules, options = collect_rules([("rules", str(RULES))])
    return target, make_plan(source, target.entries, rules, options["on_shape_mismatch"])


def test_bevfusion_build_has_the_published_mmdet3d_layout_and_the_rules_map_every_tensor_onto_it():
    """Full size, on meta (no parameter memory): the model built from bevfusion_det.py (mmdet3d 1.x BEVFusion's
    module names from mmdet3d / mmdet / mmcv parts, 40.8M parameters) has exactly the published mmdet3d 1.x
    layout, and the rules file maps every tensor of the published mit-han-lab checkpoint layout onto it, shapes
    equal, nothing left over."""
    from tests.support import fixtures as fx

    target, plan = plan_from_published_det(m3d.BEVFUSION_CONFIG)
    assert target.build == "meta" and target.describe()["params"] == 40_843_052
    published = [(k, shape) for k, shape, *_ in fx.read_keyfile("bevfusion_det_mmdet3d1x_names")]
    assert [(k, shape) for k, (shape, _) in target.entries.items()] == published
    assert all(e.status == "loaded" for e in plan.entries) and plan.unused == []
    assert all(n > 0 for n in plan.matched)
    top = {e.key.split(".")[0] for e in plan.entries}
    assert top == {"img_backbone", "img_neck", "view_transform", "pts_middle_encoder", "fusion_layer",
                   "pts_backbone", "pts_neck", "bbox_head"}


def test_bevfusion_det_into_det_map_gca_at_full_size_only_task_gca_and_the_map_head_are_new():
    """The issue's scenario at BEVFusion's size, planned on meta: the published det layout into the user's
    det + task_gca + map head build (45.8M, as the published bevfusion_det_map_gca layout) through the rules file."""
    from tests.support import fixtures as fx

    target, plan = plan_from_published_det(m3d.BEVFUSION_MAP_GCA_CONFIG)
    published = fx.read_keyfile("bevfusion_det_map_gca")
    assert target.describe()["params"] == sum(_numel(shape) for _, shape, *_ in published) == 45_830_964
    new = [e for e in plan.entries if e.status != "loaded"]
    assert {e.status for e in new} == {"new"} and plan.unused == []
    assert {e.key.rsplit(".", 2)[0] for e in new} == {"task_gca.object.channel_mlp", "task_gca.map.channel_mlp",
                                                      "map_head.classifier"}
    assert sum(e.numel for e in new if e.key.startswith("task_gca.")) == 2 * 131_072
    assert sum(e.numel for e in plan.entries if e.status == "loaded") == 40_843_052


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_bevfusion_checkpoint_grafts_into_the_mmdet3d_build_with_the_rules_file(tmp_path):
    """With values: the generated mit-han-lab layout fixture (the published shapes scaled by 8) into the lidar
    branch + fuser + decoder + TransFusion-layout head built at that scale; the camera tensors are dropped
    (not built at that scale: Swin's window tables do not scale)."""
    import torch
    from mmengine.runner.checkpoint import load_checkpoint

    from tests.conftest import _out_dir, ensure_fixtures
    from tests.support import fixtures as fx

    out_dir = ensure_fixtures(_out_dir(), only=["layouts"])
    src = out_dir / fx.load_manifest(out_dir)["layouts"]["layouts"]["bevfusion_det"]["path"]
    out = tmp_path / "bevfusion_mmdet3d.pth"
    r, _ = graft_json(src, "--into", m3d.BEVFUSION_TINY_CONFIG, "--project-root", m3d.PROJECT,
                      "--drop", r"^encoders\.camera\.", "--rules", RULES, "--fail-on", "new,mismatched,unused",
                      "-o", out)
    source = fx.layout_state_dict("bevfusion_det")
    lidar = [k for k in source if not k.startswith("encoders.camera.")]
    assert r["loaded"]["tensors"] == len(lidar) == r["target"]["tensors"] and r["new"]["tensors"] == 0
    assert r["target"]["build"] == "meta" and r["target"]["materialised"] == 0
    assert {u["key"] for u in r["unused"]} == set(source) - set(lidar) and all(u["dropped"] for u in r["unused"])
    w = written(out)
    renamed = {"encoders.lidar.backbone.conv_out.0.weight": "pts_middle_encoder.conv_out.0.weight",
               "fuser.0.weight": "fusion_layer.0.weight",
               "decoder.backbone.blocks.1.0.weight": "pts_backbone.blocks.1.0.weight",
               "heads.object.decoder.0.multihead_attn.in_proj_weight": "bbox_head.decoder.0.cross_attn.attn.in_proj_weight",
               "heads.object.decoder.0.linear2.weight": "bbox_head.decoder.0.ffn.layers.1.weight",
               "heads.object.prediction_heads.0.heatmap.1.bias": "bbox_head.prediction_heads.0.heatmap.1.bias"}
    for old, new in renamed.items():
        assert torch.equal(w[new], source[old]), (old, new)
    model = cpu_target(m3d.BEVFUSION_TINY_CONFIG).model
    load_checkpoint(model, str(out), map_location="cpu", strict=True)
    assert torch.equal(model.bbox_head.decoder[0].norms[2].weight, source["heads.object.decoder.0.norm3.weight"])
