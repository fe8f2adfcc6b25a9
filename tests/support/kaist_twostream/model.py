"""Two backbones and two FPN necks (visible, lwir) fused per level, one RPN + RoI head; per-stream normalisation."""
import copy

import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.models.detectors import BaseDetector, TwoStageDetector
from mmdet.registry import MODELS


@MODELS.register_module()
class TwoStreamDataPreprocessor(DetDataPreprocessor):
    """``DetDataPreprocessor`` for 6-channel (visible BGR + lwir BGR) images with each stream's own mean / std."""

    def __init__(self, mean_vis, std_vis, mean_lwir, std_lwir, bgr_to_rgb=True, **kwargs):
        super().__init__(mean=None, std=None, bgr_to_rgb=False, **kwargs)
        self.stream_bgr_to_rgb = bgr_to_rgb
        self._enable_normalize = True
        self.register_buffer("mean", torch.tensor(list(mean_vis) + list(mean_lwir)).view(-1, 1, 1), False)
        self.register_buffer("std", torch.tensor(list(std_vis) + list(std_lwir)).view(-1, 1, 1), False)

    def forward(self, data: dict, training: bool = False) -> dict:
        if self.stream_bgr_to_rgb:
            data = dict(data)
            data["inputs"] = [x[[2, 1, 0, 5, 4, 3], ...] for x in data["inputs"]]
        return super().forward(data, training)


@MODELS.register_module()
class TwoStreamFasterRCNN(TwoStageDetector):
    """Faster R-CNN over ``backbone_vis``/``neck_vis`` and ``backbone_lwir``/``neck_lwir``; the two FPN outputs of
    each level are averaged (``fusion='mean'``) or summed (``'sum'``) before the RPN and RoI head."""

    def __init__(self, backbone, neck, rpn_head, roi_head, train_cfg=None, test_cfg=None, backbone_lwir=None,
                 neck_lwir=None, fusion="mean", data_preprocessor=None, init_cfg=None):
        BaseDetector.__init__(self, data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if fusion not in ("mean", "sum"):
            raise ValueError(f"fusion must be 'mean' or 'sum', got {fusion!r}")
        self.fusion = fusion
        self.backbone_vis = MODELS.build(backbone)
        self.neck_vis = MODELS.build(neck)
        self.backbone_lwir = MODELS.build(copy.deepcopy(backbone_lwir or backbone))
        self.neck_lwir = MODELS.build(copy.deepcopy(neck_lwir or neck))
        # the heads exactly as TwoStageDetector builds them
        rpn = copy.deepcopy(rpn_head)
        rpn.update(train_cfg=train_cfg.rpn if train_cfg is not None else None, test_cfg=test_cfg.rpn)
        rpn.setdefault("num_classes", 1)
        self.rpn_head = MODELS.build(rpn)
        roi = copy.deepcopy(roi_head)
        roi.update(train_cfg=train_cfg.rcnn if train_cfg is not None else None, test_cfg=test_cfg.rcnn)
        self.roi_head = MODELS.build(roi)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

    def extract_feat(self, batch_inputs: torch.Tensor):
        vis = self.neck_vis(self.backbone_vis(batch_inputs[:, :3]))
        lwir = self.neck_lwir(self.backbone_lwir(batch_inputs[:, 3:]))
        if self.fusion == "sum":
            return tuple(a + b for a, b in zip(vis, lwir))
        return tuple((a + b) / 2 for a, b in zip(vis, lwir))
