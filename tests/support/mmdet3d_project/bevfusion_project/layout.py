"""BEVFusion's modules under mmdet3d 1.x names, from the parts the wheels ship (see __init__.py)."""
from mmcv.cnn import ConvModule, build_conv_layer
import torch
from mmdet3d.models.dense_heads.centerpoint_head import SeparateHead
from mmdet3d.models.detectors import Base3DDetector
from mmdet3d.models.layers import make_sparse_convmodule
from mmdet3d.models.middle_encoders import SparseEncoder
from mmdet3d.registry import MODELS
from mmdet.models.layers.transformer import DetrTransformerDecoderLayer
from mmengine.model import BaseModule, ModuleDict
from torch import nn

PARTS = ('img_backbone', 'img_neck', 'view_transform', 'pts_voxel_encoder', 'pts_middle_encoder', 'fusion_layer', 'pts_backbone', 'pts_neck',
         'bbox_head')


@MODELS.register_module()
class ProjBEVFusion(Base3DDetector):
    """The detector's parts under BEVFusion's attribute names; any part may be None."""

    def __init__(self, data_preprocessor=None, init_cfg=None, **parts):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise TypeError(f'unknown parts: {sorted(unknown)}')
        for name in PARTS:
            setattr(self, name, MODELS.build(parts[name]) if parts.get(name) else None)

    def init_weights(self):
        """As mmdet3d's BEVFusion: the image backbone's init_weights only, not BaseModule's detector-wide one,
        whose log takes the mean of every parameter (the view transform's grid size `nx` is an int64 one); the
        other parts keep their constructors' initialisation."""
        if self.img_backbone is not None:
            self.img_backbone.init_weights()

    def _layout_only(self, *args, **kwargs):
        raise NotImplementedError('ProjBEVFusion reproduces the layout for grafting; it does not run')

    loss = predict = _forward = extract_feat = _layout_only


@MODELS.register_module()
class ProjBEVFusionMapGCA(ProjBEVFusion):
    """The user's extension: BEVFusion plus per-task global context attention (`task_gca.object`, `task_gca.map`)
    and a BEV map head, both built from the registry (gca_project's TaskGCA and BEVMapHead)."""

    def __init__(self, task_gca, map_head, **kwargs):
        super().__init__(**kwargs)
        self.task_gca = ModuleDict({task: MODELS.build(cfg) for task, cfg in task_gca.items()})
        self.map_head = MODELS.build(map_head)

    def init_weights(self):
        super().init_weights()
        self.task_gca.init_weights()
        self.map_head.init_weights()


@MODELS.register_module()
class ProjLSSFPN(BaseModule):
    """The camera neck: per level, a 1x1 lateral conv of the level concatenated with the next (upsampled) one, and a
    3x3 output conv (conv-BN-ReLU each)."""

    def __init__(self, in_channels, out_channels, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        last = len(in_channels) - 1
        block = dict(norm_cfg=dict(type='BN2d'), act_cfg=dict(type='ReLU'))
        self.lateral_convs = nn.ModuleList([ConvModule(
            in_channels[i] + (in_channels[i + 1] if i == last - 1 else out_channels), out_channels, 1, **block)
            for i in range(last)])
        self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, padding=1, **block)
                                        for _ in range(last)])


def _conv_bn_relu(*specs, bias=True):
    """nn.Sequential of Conv2d(in, out, k, stride) + BatchNorm2d + ReLU per spec; the last conv alone when the
    last spec is marked 'plain'."""
    layers = []
    for spec in specs:
        cin, cout, k, stride, *plain = spec
        layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias or bool(plain)))
        if not plain:
            layers += [nn.BatchNorm2d(cout), nn.ReLU(True)]
    return nn.Sequential(*layers)


@MODELS.register_module()
class ProjDepthLSSTransform(nn.Module):
    """Camera features -> BEV by lift-splat with depth from lidar: the BEV grid (dx, bx, nx) and the image frustum
    as non-trainable parameters, the depth-image encoder (dtransform), depth + context net, BEV downsampling."""

    def __init__(self, in_channels, out_channels, image_size, feature_size, xbound, ybound, zbound, dbound):
        super().__init__()
        bounds = torch.tensor([xbound, ybound, zbound])
        self.dx = nn.Parameter(bounds[:, 2], requires_grad=False)
        self.bx = nn.Parameter(bounds[:, 0] + bounds[:, 2] / 2, requires_grad=False)
        self.nx = nn.Parameter(((bounds[:, 1] - bounds[:, 0]) / bounds[:, 2]).round().long(), requires_grad=False)
        (ih, iw), (fh, fw) = image_size, feature_size
        ds = torch.arange(*dbound).view(-1, 1, 1).expand(-1, fh, fw)
        xs = torch.linspace(0, iw - 1, fw).view(1, 1, fw).expand(len(ds), fh, fw)
        ys = torch.linspace(0, ih - 1, fh).view(1, fh, 1).expand(len(ds), fh, fw)
        self.frustum = nn.Parameter(torch.stack((xs, ys, ds), -1), requires_grad=False)
        self.dtransform = _conv_bn_relu((1, 8, 1, 1), (8, 32, 5, 4), (32, 64, 5, 2))
        self.depthnet = _conv_bn_relu((in_channels + 64, in_channels, 3, 1), (in_channels, in_channels, 3, 1),
                                      (in_channels, len(ds) + out_channels, 1, 1, 'plain'))
        self.downsample = _conv_bn_relu(*[(out_channels, out_channels, 3, s) for s in (1, 2, 1)], bias=False)


@MODELS.register_module()
class ProjBEVFusionSparseEncoder(SparseEncoder):
    """mmdet3d's SparseEncoder on (x, y, z) voxel coordinates: the last convolution reduces z, kernel (1, 1, 3)."""

    def __init__(self, *args, norm_cfg=dict(type='BN1d', eps=1e-3, momentum=0.01), **kwargs):
        super().__init__(*args, norm_cfg=norm_cfg, **kwargs)
        self.conv_out = make_sparse_convmodule(
            self.encoder_channels[-1][-1], self.output_channels, kernel_size=(1, 1, 3), stride=(1, 1, 2),
            norm_cfg=norm_cfg, padding=0, indice_key='spconv_down2', conv_type='SparseConv3d')


@MODELS.register_module()
class ProjConvFuser(nn.Sequential):
    """Concatenated camera and lidar BEV features -> 3x3 conv, BN, ReLU."""

    def __init__(self, in_channels, out_channels):
        super().__init__(nn.Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(True))


class PositionEmbedding(nn.Module):
    """Learned position embedding of query / key coordinates: conv1d, BN, ReLU, conv1d."""

    def __init__(self, input_channel, num_pos_feats):
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Conv1d(input_channel, num_pos_feats, 1), nn.BatchNorm1d(num_pos_feats), nn.ReLU(inplace=True),
            nn.Conv1d(num_pos_feats, num_pos_feats, 1))


class DecoderLayer(DetrTransformerDecoderLayer):
    """mmdet's DETR decoder layer (self_attn, cross_attn, ffn, norms) plus position embeddings of both."""

    def __init__(self, pos_channels=2, **kwargs):
        super().__init__(**kwargs)
        self.self_posembed = PositionEmbedding(pos_channels, self.embed_dims)
        self.cross_posembed = PositionEmbedding(pos_channels, self.embed_dims)


@MODELS.register_module()
class ProjTransFusionHead(BaseModule):
    """TransFusion's head layout: shared conv, heatmap head, class encoding, transformer decoder layers and one
    SeparateHead (1d convs) of box regressions per decoder layer."""

    def __init__(self, in_channels=512, hidden_channel=128, num_classes=10, num_decoder_layers=1, num_heads=8,
                 ffn_channels=256, head_conv=64, common_heads=dict(center=(2, 2), height=(1, 2), dim=(3, 2),
                                                                    rot=(2, 2), vel=(2, 2)), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        conv2d = dict(type='Conv2d')
        self.shared_conv = build_conv_layer(conv2d, in_channels, hidden_channel, 3, padding=1, bias=True)
        self.heatmap_head = nn.Sequential(
            ConvModule(hidden_channel, hidden_channel, 3, padding=1, conv_cfg=conv2d, norm_cfg=dict(type='BN2d')),
            build_conv_layer(conv2d, hidden_channel, num_classes, 3, padding=1, bias=True))
        self.class_encoding = nn.Conv1d(num_classes, hidden_channel, 1)
        attn = dict(embed_dims=hidden_channel, num_heads=num_heads, dropout=0.1)
        self.decoder = nn.ModuleList([DecoderLayer(
            self_attn_cfg=attn, cross_attn_cfg=attn, norm_cfg=dict(type='LN'),
            ffn_cfg=dict(embed_dims=hidden_channel, feedforward_channels=ffn_channels, num_fcs=2, ffn_drop=0.1,
                         act_cfg=dict(type='ReLU', inplace=True))) for _ in range(num_decoder_layers)])
        heads = dict(common_heads, heatmap=(num_classes, 2))
        self.prediction_heads = nn.ModuleList([SeparateHead(
            hidden_channel, heads, head_conv=head_conv, conv_cfg=dict(type='Conv1d'), norm_cfg=dict(type='BN1d'))
            for _ in range(num_decoder_layers)])


__all__ = ['ProjBEVFusion', 'ProjBEVFusionMapGCA', 'ProjBEVFusionSparseEncoder', 'ProjConvFuser',
           'ProjDepthLSSTransform', 'ProjLSSFPN', 'ProjTransFusionHead']
