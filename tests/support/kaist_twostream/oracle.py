"""A detector that answers with the ground truth: the test pipeline's ``gt_instances`` (original image
coordinates, ignored boxes left out) with score 1. For tests of the metrics path (MR 0, recall 100)."""
import torch
from mmdet.models.detectors import BaseDetector
from mmdet.registry import MODELS
from mmengine.structures import InstanceData


@MODELS.register_module()
class KaistGroundTruthDetector(BaseDetector):
    def __init__(self, data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)

    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        for ds in batch_data_samples:
            gt = ds.gt_instances
            pred = InstanceData()
            pred.bboxes = gt.bboxes.tensor.clone() if hasattr(gt.bboxes, "tensor") else gt.bboxes.clone()
            pred.labels = gt.labels.clone()
            pred.scores = torch.ones(len(gt.labels))
            ds.pred_instances = pred
        return batch_data_samples

    def loss(self, batch_inputs, batch_data_samples):
        raise NotImplementedError("KaistGroundTruthDetector only predicts")

    def _forward(self, batch_inputs, batch_data_samples=None):
        return ()

    def extract_feat(self, batch_inputs):
        return ()
