"""Tiny versions of mmaction2's shipped NTU60 configs (PoseC3D SlowOnly keypoint, RGBPoseConv3D) for CPU tests.

The option dicts are ``--cfg-options`` for ``ckpttool.integrations.openmmlab.load_config``: they shrink depth,
widths and clip lengths so a model builds in well under a second and a forward pass takes milliseconds.
"""
from __future__ import annotations

POSEC3D_CONFIG = "slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint"
RGBPOSE_CONFIG = "rgbpose_conv3d/rgbpose_conv3d"

# PoseC3D SlowOnly (keypoint heatmaps, 17 channels): ResNet18-style blocks, 4 base channels, one block a stage.
TINY_POSEC3D_MODEL = {
    "model.backbone.depth": 18,
    "model.backbone.base_channels": 4,
    "model.backbone.stage_blocks": (1, 1, 1),
    "model.cls_head.in_channels": 16,  # 4 * 2**2 * expansion 1
}

# RGBPoseConv3D: both pathways ResNet18-style with one block a stage.
TINY_RGBPOSE_MODEL = {
    "model.backbone.rgb_pathway.depth": 18,
    "model.backbone.rgb_pathway.base_channels": 8,
    "model.backbone.rgb_pathway.stage_blocks": (1, 1, 1, 1),
    "model.backbone.pose_pathway.depth": 18,
    "model.backbone.pose_pathway.base_channels": 4,
    "model.backbone.pose_pathway.stage_blocks": (1, 1, 1),
    "model.cls_head.in_channels": [64, 16],  # rgb 8 * 2**3, pose 4 * 2**2
}
