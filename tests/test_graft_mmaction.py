"""`ckpt graft` into real mmaction2 models built from the package's configs (scaled down with --cfg-options):
two single-stream checkpoints → RGBPoseConv3D, and an NTU60 head → NTU120 (skip / slice / error)."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

pytest.importorskip("mmaction")
torch = pytest.importorskip("torch")

from ckpttool.cli.main import cli  # noqa: E402
from ckpttool.integrations.mmaction import shipped_config  # noqa: E402
from ckpttool.io import load  # noqa: E402
from ckpttool.surgery.target import resolve_target  # noqa: E402
from tests.support import graft_fixtures as gf  # noqa: E402
from tests.support.ntu_fixtures import POSEC3D_CONFIG, RGBPOSE_CONFIG, TINY_POSEC3D_MODEL  # noqa: E402

pytestmark = pytest.mark.mmaction

STREAM_RULES = ["--map", r"^rgb\.backbone\.=backbone.rgb_path.", "--map", r"^pose\.backbone\.=backbone.pose_path.",
                "--map", r"^rgb\.cls_head\.fc_cls\.=cls_head.fc_rgb.",
                "--map", r"^pose\.cls_head\.fc_cls\.=cls_head.fc_pose."]
NTU120 = [f"{k}={v!r}" for k, v in {**TINY_POSEC3D_MODEL, "model.cls_head.num_classes": 120}.items()]


def graft(*args):
    res = CliRunner().invoke(cli, ["graft", "-q", *map(str, args)])
    return res


def as_json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def written(path) -> dict:
    return {k: t.to_torch() for k, t in load(path).state_dict().items()}


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    d = tmp_path_factory.mktemp("streams")
    paths = gf.write_single_stream(d)
    return paths, {k: load(p).state_dict().to_torch() for k, p in paths.items()}


@pytest.fixture(scope="module")
def rgbpose(streams, tmp_path_factory):
    paths, _ = streams
    out = tmp_path_factory.mktemp("rgbpose") / "rgbpose_init.pth"
    r = as_json(graft("--from", f"rgb={paths['rgb']}", "--from", f"pose={paths['pose']}",
                      "--into", shipped_config(RGBPOSE_CONFIG), "--cfg-options", *gf.TINY_RGBPOSE_OPTIONS,
                      *STREAM_RULES, "--on-shape-mismatch", "slice", "-o", out, "--format", "json"))
    return r, out


def test_two_streams_into_rgbpose_laterals_are_new(rgbpose, streams):
    r, out = rgbpose
    _, sources = streams
    keys = written(out)
    laterals = list(dict.fromkeys(k.split("_lateral.")[0] + "_lateral" for k in keys if "_lateral." in k))
    assert laterals and r["new"]["modules"] == laterals
    assert r["new"]["tensors"] == sum("_lateral." in k for k in keys)
    n_source = sum(len(sd) for sd in sources.values())
    assert r["unused"] == [] and r["loaded"]["tensors"] + len(r["mismatched"]) == n_source
    assert {m["action"] for m in r["mismatched"]} == {"slice"}
    assert [s["prefix"] for s in r["source"]] == ["rgb", "pose"]


def test_rgbpose_values_come_from_the_right_stream(rgbpose, streams):
    r, out = rgbpose
    _, src = streams
    w = written(out)
    sliced = {m["key"] for m in r["mismatched"]}
    for stream, path in (("rgb", "rgb_path"), ("pose", "pose_path")):
        for key, value in src[stream].items():
            target = key.replace("backbone.", f"backbone.{path}.", 1) if key.startswith("backbone.") \
                else key.replace("cls_head.fc_cls.", f"cls_head.fc_{stream}.")
            if target in sliced:  # laterally fed first blocks: the source fills the leading input channels
                block = tuple(slice(0, n) for n in value.shape)
                assert torch.equal(w[target][block], value) and w[target].shape[1] > value.shape[1], target
            else:
                assert torch.equal(w[target], value), target


def test_rgbpose_output_loads_into_the_model_and_runs(rgbpose):
    from mmengine.runner.checkpoint import load_checkpoint

    _, out = rgbpose
    model = resolve_target(shipped_config(RGBPOSE_CONFIG), gf.TINY_RGBPOSE_OPTIONS, seed=123, build="cpu").model
    load_checkpoint(model, str(out), map_location="cpu", strict=True)
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 8, 32, 32), torch.randn(1, 17, 32, 8, 8))  # pose: 4x frames, 1/4 size
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.fixture(scope="module")
def ntu60(tmp_path_factory):
    path = tmp_path_factory.mktemp("ntu") / "posec3d_ntu60.pth"
    return path, gf.write_posec3d(path, num_classes=60)


def head_graft(ntu60, tmp_path, policy):
    path, _ = ntu60
    out = tmp_path / f"ntu120_{policy}.pth"
    res = graft(path, "--into", shipped_config(POSEC3D_CONFIG), "--cfg-options", *NTU120,
                "--on-shape-mismatch", policy, "-o", out, "--format", "json")
    return res, out


def test_ntu60_to_ntu120_skip_keeps_the_new_heads_init(ntu60, tmp_path):
    res, out = head_graft(ntu60, tmp_path, "skip")
    r = as_json(res)
    _, src = ntu60
    assert [(m["key"], m["source_shape"], m["target_shape"], m["action"]) for m in r["mismatched"]] == \
        [(k, list(src[k].shape), [120, *src[k].shape[1:]], "skip") for k in ("cls_head.fc_cls.weight",
                                                                              "cls_head.fc_cls.bias")]
    init = resolve_target(shipped_config(POSEC3D_CONFIG), NTU120, seed=0, build="cpu")  # the same seed as the CLI default
    w = written(out)
    assert torch.equal(w["cls_head.fc_cls.weight"], init.initial("cls_head.fc_cls.weight"))
    assert r["loaded"]["tensors"] == len(src) - 2
    assert torch.equal(w["backbone.conv1.conv.weight"], src["backbone.conv1.conv.weight"])


def test_ntu60_to_ntu120_slice_copies_the_60_classes(ntu60, tmp_path):
    res, out = head_graft(ntu60, tmp_path, "slice")
    r = as_json(res)
    _, src = ntu60
    init = resolve_target(shipped_config(POSEC3D_CONFIG), NTU120, seed=0, build="cpu")
    w = written(out)
    for key in ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias"):
        assert torch.equal(w[key][:60], src[key]) and torch.equal(w[key][60:], init.initial(key)[60:])
    assert {m["action"] for m in r["mismatched"]} == {"slice"}


def test_ntu60_to_ntu120_error_refuses_and_writes_nothing(ntu60, tmp_path):
    res, out = head_graft(ntu60, tmp_path, "error")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "cls_head.fc_cls.weight" in res.stderr
    assert not os.path.exists(out)


# --- targets built without parameter memory ---------------------------------------------------------------------
def test_meta_build_writes_what_a_cpu_build_writes(streams, rgbpose, tmp_path):
    """The default build puts parameters on meta and makes only the new / mismatched tensors real: the written
    file equals, tensor for tensor, a graft whose target was built and initialised on the CPU under the same seed
    (so the new laterals hold exactly what a CPU build's init_weights gives them), and it loads strictly."""
    r_meta, out_meta = rgbpose
    paths, _ = streams
    out_cpu = tmp_path / "cpu.pth"
    r_cpu = as_json(graft("--from", f"rgb={paths['rgb']}", "--from", f"pose={paths['pose']}",
                          "--into", shipped_config(RGBPOSE_CONFIG), "--cfg-options", *gf.TINY_RGBPOSE_OPTIONS,
                          *STREAM_RULES, "--on-shape-mismatch", "slice", "--build", "cpu", "-o", out_cpu,
                          "--format", "json"))
    assert r_meta["target"]["build"] == "meta" and "build" not in r_cpu["target"]
    assert r_meta["target"]["materialised"] == r_meta["new"]["tensors"] + len(r_meta["mismatched"])
    a, b = written(out_meta), written(out_cpu)
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    cpu = resolve_target(shipped_config(RGBPOSE_CONFIG), gf.TINY_RGBPOSE_OPTIONS, seed=0, build="cpu")
    new = [k for k in a if "_lateral." in k]
    assert new and all(torch.equal(a[k], cpu.initial(k)) for k in new)
    assert any(not torch.equal(cpu.initial(k), torch.zeros_like(cpu.initial(k))) for k in new)
    from mmengine.runner.checkpoint import load_checkpoint

    load_checkpoint(cpu.model, str(out_meta), map_location="cpu", strict=True)


def test_meta_build_of_the_ntu120_head_equals_cpu_init(ntu60, tmp_path):
    res, out = head_graft(ntu60, tmp_path, "skip")
    r = as_json(res)
    assert r["target"]["build"] == "meta" and r["target"]["materialised"] == 2
    init = resolve_target(shipped_config(POSEC3D_CONFIG), NTU120, seed=0, build="cpu")
    w = written(out)
    for key in ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias"):
        assert torch.equal(w[key], init.initial(key))


ITEM_MODEL = '''
import torch
from torch import nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS


@MODELS.register_module(force=True)
class CkptItemInInit(BaseModel):
    """Reads a parameter's value while constructing (as drop-path schedules do): cannot be built on meta."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = float(self.fc.weight.abs().sum().item()) + 1.0
        self.head = nn.Linear(3, 2)

    def forward(self, inputs, data_samples=None, mode="tensor"):
        return self.head(self.fc(inputs) * self.scale)
'''


def test_a_model_that_reads_values_falls_back_to_a_cpu_build(tmp_path, monkeypatch):
    (tmp_path / "item_project.py").write_text(ITEM_MODEL)
    cfg = tmp_path / "item_cfg.py"
    cfg.write_text("custom_imports = dict(imports=['item_project'], allow_failed_imports=False)\n"
                   "model = dict(type='CkptItemInInit')\n")
    src = tmp_path / "src.pth"
    torch.save({"fc.weight": torch.ones(3, 4), "fc.bias": torch.zeros(3)}, src)
    monkeypatch.chdir(tmp_path)
    res = graft(src, "--into", cfg, "-o", tmp_path / "out.pth", "--format", "json")
    r = as_json(res)
    assert "build" not in r["target"] and any("built on the CPU" in n for n in r["notes"])
    assert res.stderr.count("built on the CPU") == 1
    w = written(tmp_path / "out.pth")
    assert torch.equal(w["fc.weight"], torch.ones(3, 4)) and set(w) == {"fc.weight", "fc.bias", "head.weight",
                                                                         "head.bias"}
