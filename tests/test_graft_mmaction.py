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
    model = resolve_target(shipped_config(RGBPOSE_CONFIG), gf.TINY_RGBPOSE_OPTIONS, seed=123).model
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
    init = resolve_target(shipped_config(POSEC3D_CONFIG), NTU120, seed=0)  # the same seed as the CLI default
    w = written(out)
    assert torch.equal(w["cls_head.fc_cls.weight"], init.initial("cls_head.fc_cls.weight"))
    assert r["loaded"]["tensors"] == len(src) - 2
    assert torch.equal(w["backbone.conv1.conv.weight"], src["backbone.conv1.conv.weight"])


def test_ntu60_to_ntu120_slice_copies_the_60_classes(ntu60, tmp_path):
    res, out = head_graft(ntu60, tmp_path, "slice")
    r = as_json(res)
    _, src = ntu60
    init = resolve_target(shipped_config(POSEC3D_CONFIG), NTU120, seed=0)
    w = written(out)
    for key in ("cls_head.fc_cls.weight", "cls_head.fc_cls.bias"):
        assert torch.equal(w[key][:60], src[key]) and torch.equal(w[key][60:], init.initial(key)[60:])
    assert {m["action"] for m in r["mismatched"]} == {"slice"}


def test_ntu60_to_ntu120_error_refuses_and_writes_nothing(ntu60, tmp_path):
    res, out = head_graft(ntu60, tmp_path, "error")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "cls_head.fc_cls.weight" in res.stderr
    assert not os.path.exists(out)
