"""Extra source checkpoints for the `ckpt graft` tests (written into a test's tmp dir; torch imported lazily).

* ``write_single_stream``: real mmaction2 single-stream recognizers built from the configs shipped next to
  RGBPoseConv3D (``rgb_only.py`` SlowOnly RGB, ``pose_only.py`` PoseC3D), scaled to the widths of
  ``tests.support.ntu_fixtures.TINY_RGBPOSE_MODEL`` so they graft into the tiny RGBPoseConv3D.
* ``write_resnet50``: an ImageNet-layout ResNet-50 state dict (conv1, bn1, layer1-4, fc), the KAIST layout's
  ``backbone_vis`` keys without their prefix plus ``fc``, scaled like the layout fixtures.
* ``write_posec3d``: a tiny PoseC3D (NTU60 head by default) for the head-resize scenario.
"""
from __future__ import annotations

from tests.support import fixtures as fx
from tests.support.ntu_fixtures import POSEC3D_CONFIG, TINY_POSEC3D_MODEL, TINY_RGBPOSE_MODEL

RGB_ONLY = "rgbpose_conv3d/rgb_only"
POSE_ONLY = "rgbpose_conv3d/pose_only"

TINY_RGB_ONLY = {
    "model.backbone.depth": TINY_RGBPOSE_MODEL["model.backbone.rgb_pathway.depth"],
    "model.backbone.base_channels": TINY_RGBPOSE_MODEL["model.backbone.rgb_pathway.base_channels"],
    "model.backbone.stage_blocks": TINY_RGBPOSE_MODEL["model.backbone.rgb_pathway.stage_blocks"],
    "model.cls_head.in_channels": TINY_RGBPOSE_MODEL["model.cls_head.in_channels"][0],
}
TINY_POSE_ONLY = {
    "model.backbone.depth": TINY_RGBPOSE_MODEL["model.backbone.pose_pathway.depth"],
    "model.backbone.base_channels": TINY_RGBPOSE_MODEL["model.backbone.pose_pathway.base_channels"],
    "model.backbone.stage_blocks": TINY_RGBPOSE_MODEL["model.backbone.pose_pathway.stage_blocks"],
    "model.cls_head.in_channels": TINY_RGBPOSE_MODEL["model.cls_head.in_channels"][1],
}
# the RGBPoseConv3D target, scaled the same way (for --cfg-options)
TINY_RGBPOSE_OPTIONS = [f"{k}={v!r}" for k, v in TINY_RGBPOSE_MODEL.items()]


def build(config: str, options: dict, seed: int):
    import torch

    from ckpttool.integrations.mmaction import shipped_config
    from ckpttool.integrations.openmmlab import build_model, load_config

    torch.manual_seed(seed)
    return build_model(load_config(shipped_config(config), options))


def save_model(model, path, **meta) -> dict:
    """torch.save({'meta', 'state_dict'}) like an mmengine checkpoint; returns {key: tensor} as saved."""
    import torch

    sd = model.state_dict()
    torch.save({"meta": dict(meta), "state_dict": sd}, path)
    return sd


def write_single_stream(out_dir) -> dict:
    """rgb.pth (SlowOnly RGB) and pose.pth (PoseC3D) in out_dir; returns {'rgb': path, 'pose': path}."""
    paths = {"rgb": out_dir / "rgb.pth", "pose": out_dir / "pose.pth"}
    save_model(build(RGB_ONLY, TINY_RGB_ONLY, 11), paths["rgb"], epoch=30, stream="rgb")
    save_model(build(POSE_ONLY, TINY_POSE_ONLY, 12), paths["pose"], epoch=240, stream="pose")
    return paths


def write_posec3d(path, num_classes: int = 60, seed: int = 5) -> dict:
    options = {**TINY_POSEC3D_MODEL, "model.cls_head.num_classes": num_classes}
    return save_model(build(POSEC3D_CONFIG, options, seed), path, epoch=24, dataset="ntu60")


def resnet50_entries() -> list:
    """(key, scaled shape, dtype, kind) of an ImageNet ResNet-50: KAIST backbone_vis keys unprefixed, plus fc."""
    prefix = "backbone_vis."
    entries = [(k[len(prefix):], s, d, kind) for k, s, d, kind in fx.scaled_shapes("kaist_frcnn")
               if k.startswith(prefix)]
    width = fx.scale_dim(2048)
    classes = fx.scale_dim(1000)
    return entries + [("fc.weight", (classes, width), "float32", "param"), ("fc.bias", (classes,), "float32", "param")]


def write_resnet50(path, seed: int = 50) -> dict:
    """A bare OrderedDict state dict, as torchvision / timm ImageNet weights are stored."""
    import torch

    sd = fx.tensors_from_entries(resnet50_entries(), seed)
    torch.save(sd, path)
    return sd
