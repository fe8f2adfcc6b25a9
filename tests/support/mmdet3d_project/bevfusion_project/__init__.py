"""A project module with mmdet3d 1.x BEVFusion's module names (mmdet3d keeps BEVFusion in its `projects/` folder,
outside the wheel): the detector's attributes `img_backbone`, `pts_voxel_encoder`, `pts_middle_encoder`,
`fusion_layer`, `pts_backbone`, `pts_neck`, `bbox_head`, assembled from the modules the mmdet3d / mmdet / mmcv
wheels do ship (SwinTransformer, HardSimpleVFE, SparseEncoder with sparse conv from mmcv.ops, SECOND, SECONDFPN,
DetrTransformerDecoderLayer, SeparateHead, ConvModule) plus plain torch layers for the camera neck
(GeneralizedLSSFPN's layout), the view transform (DepthLSSTransform's) and the fuser. Written here from the
published tensor layout (fixtures/keys/bevfusion_det_mmdet3d1x_names.txt), not from BEVFusion's code: the same
names, shapes and dtypes, not its computation. For grafting: it has no forward."""
from .layout import (ProjBEVFusion, ProjBEVFusionMapGCA, ProjBEVFusionSparseEncoder, ProjConvFuser,
                     ProjDepthLSSTransform, ProjLSSFPN, ProjTransFusionHead)

__all__ = ["ProjBEVFusion", "ProjBEVFusionMapGCA", "ProjBEVFusionSparseEncoder", "ProjConvFuser",
           "ProjDepthLSSTransform", "ProjLSSFPN", "ProjTransFusionHead"]
