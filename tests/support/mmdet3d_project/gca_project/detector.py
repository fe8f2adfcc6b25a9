"""CenterPoint + map head + task GCA: the detector of mmdet3d 1.x, subclassed the way a project does it."""
from mmdet3d.models.detectors import CenterPoint
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule, ModuleDict
from torch import nn


@MODELS.register_module()
class TaskGCA(BaseModule):
    """Global context attention for one task: a channel gate computed from the pooled BEV features (two bias-free
    1x1 convolutions, channels -> channels / reduction -> channels). Kaiming-initialised by init_weights."""

    def __init__(self, channels, reduction=4,
                 init_cfg=dict(type='Kaiming', layer='Conv2d', mode='fan_in', nonlinearity='relu')):
        super().__init__(init_cfg=init_cfg)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=False), nn.Sigmoid())

    def forward(self, x):
        return x * self.channel_mlp(x.mean(dim=(2, 3), keepdim=True))


@MODELS.register_module()
class BEVMapHead(BaseModule):
    """BEV semantic map segmentation: two 3x3 conv-BN-ReLU blocks and a 1x1 classifier whose bias starts at
    `init_bias` (a low prior probability per map class), set by init_weights."""

    def __init__(self, in_channels, feat_channels, num_classes, init_bias=-2.19,
                 init_cfg=dict(type='Kaiming', layer='Conv2d')):
        super().__init__(init_cfg=init_cfg)
        self.init_bias = init_bias
        self.classifier = nn.Sequential(
            nn.Conv2d(in_channels, feat_channels, 3, padding=1, bias=False), nn.BatchNorm2d(feat_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(feat_channels, feat_channels, 3, padding=1, bias=False), nn.BatchNorm2d(feat_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(feat_channels, num_classes, 1))

    def init_weights(self):
        super().init_weights()
        nn.init.constant_(self.classifier[-1].bias, self.init_bias)

    def forward(self, x):
        return self.classifier(x)


@MODELS.register_module()
class CenterPointMapGCA(CenterPoint):
    """CenterPoint whose BEV features pass through `task_gca.object` before the detection head, and through
    `task_gca.map` into a map head; `predict` adds `pred_map` (per-class probabilities) to each sample."""

    def __init__(self, task_gca, map_head, **kwargs):
        super().__init__(**kwargs)
        # mmengine's ModuleDict: BaseModule.init_weights only descends into children that have init_weights,
        # which a torch.nn.ModuleDict has not (its TaskGCAs would keep PyTorch's default init)
        self.task_gca = ModuleDict({task: TaskGCA(**task_gca) for task in ('object', 'map')})
        self.map_head = MODELS.build(map_head)

    def predict(self, batch_inputs_dict, batch_data_samples, **kwargs):
        metas = [sample.metainfo for sample in batch_data_samples]
        _, feats = self.extract_feat(batch_inputs_dict, metas)
        bev = feats[0]
        results = self.pts_bbox_head.predict([self.task_gca['object'](bev)], batch_data_samples, **kwargs)
        maps = self.map_head(self.task_gca['map'](bev)).sigmoid()
        samples = self.add_pred_to_datasample(batch_data_samples, results)
        for sample, probs in zip(samples, maps):
            sample.pred_map = probs
        return samples
