"""The OpenMMLab integration layer: mmaction import workaround, shipped configs, config options, model building."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("mmaction")
torch = pytest.importorskip("torch")

from ckpttool.errors import CkptError  # noqa: E402
from ckpttool.integrations import mmaction as mma  # noqa: E402
from ckpttool.integrations.openmmlab import (  # noqa: E402
    build_model, load_config, load_state_dict_into, parse_cfg_options)
from tests.support.ntu_fixtures import (  # noqa: E402
    POSEC3D_CONFIG, RGBPOSE_CONFIG, TINY_POSEC3D_MODEL, TINY_RGBPOSE_MODEL)

pytestmark = pytest.mark.mmaction


def test_import_mmaction_registers_models_with_drn_stand_in():
    mod = mma.import_mmaction()
    assert mod.__name__ == "mmaction"
    import mmaction.models  # noqa: F401  (works now)
    from mmaction.registry import MODELS

    assert MODELS.get("Recognizer3D") is not None
    assert MODELS.get("RGBPoseConv3D") is not None
    # the stand-in exists only because the wheel lacks drn (open-mmlab/mmaction2#2714) and refuses to build
    if mma._drn_missing():
        with pytest.raises(CkptError, match="2714"):
            sys.modules["mmaction.models.localizers.drn.drn"].DRN()


def test_shipped_config_lookup():
    p = mma.shipped_config(POSEC3D_CONFIG)
    assert p.name == "slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint.py" and p.is_file()
    assert mma.shipped_config("rgbpose_conv3d.py") == mma.shipped_config(RGBPOSE_CONFIG)
    assert mma.shipped_config("skeleton/posec3d/rgbpose_conv3d/rgbpose_conv3d.py").is_file()
    with pytest.raises(CkptError, match="no config named"):
        mma.shipped_config("no_such_config_anywhere")


def test_parse_cfg_options_literals_and_dictaction_forms():
    opts = parse_cfg_options(["a.b=1", "c=(1, 2)", "d='x'", "e=None", "f=[1,[2,3]]", "g=abc", "h=a,b",
                              "i=true", "j=0.5", "k={'x': 1}"])
    assert opts == {"a.b": 1, "c": (1, 2), "d": "x", "e": None, "f": [1, [2, 3]], "g": "abc", "h": ["a", "b"],
                    "i": True, "j": 0.5, "k": {"x": 1}}
    assert parse_cfg_options({"x": 1}) == {"x": 1}
    assert parse_cfg_options(None) == {}
    with pytest.raises(CkptError, match="KEY=VALUE"):
        parse_cfg_options(["novalue"])


def test_load_config_resolves_base_and_merges_options():
    cfg = load_config(mma.shipped_config(POSEC3D_CONFIG), ["model.backbone.depth=18", "model.cls_head.num_classes=7"])
    assert cfg.default_scope == "mmaction"  # from _base_/default_runtime.py
    assert cfg.model.backbone.depth == 18 and cfg.model.cls_head.num_classes == 7
    with pytest.raises(CkptError, match="config not found"):
        load_config("/nonexistent/config.py")


def _logits(model, inputs):
    with torch.no_grad():
        return model.extract_feat(inputs, stage="head")[0]


def test_build_tiny_posec3d_and_load_state_dict():
    cfg = load_config(mma.shipped_config(POSEC3D_CONFIG), TINY_POSEC3D_MODEL)
    model = build_model(cfg)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 100_000
    x = torch.randn(1, 2, 17, 8, 32, 32)  # batch 1, two views, heatmaps C T H W
    out = _logits(model, x)
    assert out.shape == (2, 60)

    # a second model gets the first one's weights through load_state_dict_into (tensors and ndarrays accepted)
    other = build_model(cfg)
    sd = {k: (v.numpy() if i % 2 else v) for i, (k, v) in enumerate(model.state_dict().items())}
    info = load_state_dict_into(other, sd)
    assert info["missing"] == [] and info["unexpected"] == []
    assert torch.allclose(_logits(other, x), out)


def test_load_state_dict_into_reports_mismatches():
    cfg = load_config(mma.shipped_config(POSEC3D_CONFIG), TINY_POSEC3D_MODEL)
    model = build_model(cfg)
    sd = dict(model.state_dict())
    sd.pop("cls_head.fc_cls.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CkptError, match="1 missing key.*cls_head.fc_cls.bias.*1 unexpected key.*extra.weight"):
        load_state_dict_into(model, sd)
    info = load_state_dict_into(model, sd, strict=False)
    assert info["missing"] == ["cls_head.fc_cls.bias"] and info["unexpected"] == ["extra.weight"]
    sd = dict(model.state_dict())
    sd["cls_head.fc_cls.weight"] = torch.zeros(3, 3)
    with pytest.raises(CkptError, match="shape mismatch.*cls_head.fc_cls.weight"):
        load_state_dict_into(model, sd, strict=False)


def test_build_tiny_rgbposeconv3d():
    cfg = load_config(mma.shipped_config(RGBPOSE_CONFIG), TINY_RGBPOSE_MODEL)
    model = build_model(cfg)
    assert type(model).__name__ == "MMRecognizer3D"
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    imgs = torch.randn(1, 1, 3, 8, 32, 32)      # N V C T H W, RGB 8 frames
    heat = torch.randn(1, 1, 17, 32, 8, 8)      # pose 32 frames at a quarter of the resolution
    logits = _logits(model, {"imgs": imgs, "heatmap_imgs": heat})
    assert set(logits) == {"rgb", "pose"} and logits["rgb"].shape == (1, 60)


def test_build_model_without_model_section_is_an_error():
    from mmengine.config import Config

    with pytest.raises(CkptError, match="no `model`"):
        build_model(Config(dict(default_scope="mmaction")))


def test_cfg_values_nested_brackets_and_words_without_mmengine_internals():
    from ckpttool.integrations.openmmlab import parse_cfg_value

    assert parse_cfg_value("[a,(b,c)]") == ["a", ("b", "c")]
    assert parse_cfg_value("(x, 2, FALSE)") == ("x", 2, False)
    assert parse_cfg_value("a,[1,b]") == ["a", [1, "b"]]
    assert parse_cfg_value("none") is None and parse_cfg_value("1e-3x") == "1e-3x"


def test_custom_imports_resolve_from_another_directory_with_project_root(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    (proj / "myproj").mkdir(parents=True)
    (proj / "myproj" / "__init__.py").write_text("MARK = 'imported'\n")
    (proj / "configs").mkdir()
    cfg = proj / "configs" / "c.py"
    cfg.write_text("custom_imports = dict(imports=['myproj'], allow_failed_imports=False)\nmodel = dict(type='X')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delitem(sys.modules, "myproj", raising=False)
    with pytest.raises(CkptError, match="myproj"):
        load_config(cfg)
    assert str(proj) not in sys.path
    assert load_config(cfg, project_root=proj).model["type"] == "X"
    assert sys.modules["myproj"].MARK == "imported" and str(proj) not in sys.path  # sys.path restored
    monkeypatch.delitem(sys.modules, "myproj")
    monkeypatch.chdir(proj)  # like tools/test.py run from the project
    assert load_config(cfg).model["type"] == "X"


def test_inner_dataset_and_test_split_through_wrappers():
    from mmengine.config import Config

    from ckpttool.integrations.openmmlab import inner_dataset, test_dataset_cfg

    cfg = Config(dict(test_dataloader=dict(dataset=dict(type="RepeatDataset", times=2, dataset=dict(
        type="PoseDataset", split="xsub_val", pipeline=[])))))
    ds = test_dataset_cfg(cfg, "xview_val")
    assert inner_dataset(ds)["split"] == "xview_val" and cfg.test_dataloader.dataset.dataset.split == "xsub_val"
    with pytest.raises(CkptError, match="test_dataloader"):
        test_dataset_cfg(Config(dict(model=dict())))
