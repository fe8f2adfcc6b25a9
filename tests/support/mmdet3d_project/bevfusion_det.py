# mit-han-lab BEVFusion's detector (nuScenes, Swin-T camera backbone, lidar voxels of 0.075 m) under mmdet3d 1.x
# BEVFusion's module names, from the project module `bevfusion_project` (custom_imports; --project-root), at
# BEVFusion's sizes (40.8M parameters; mmdet3d's own BEVFusion lives in its projects/ folder, outside the wheel).
default_scope = 'mmdet3d'
custom_imports = dict(imports=['bevfusion_project'], allow_failed_imports=False)
point_cloud_range = [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
model = dict(
    type='ProjBEVFusion',
    data_preprocessor=dict(
        type='Det3DDataPreprocessor', voxel=True, voxel_type='hard',
        voxel_layer=dict(max_num_points=10, point_cloud_range=point_cloud_range, voxel_size=[0.075, 0.075, 0.2],
                         max_voxels=[120000, 160000])),
    img_backbone=dict(
        type='mmdet.SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
        mlp_ratio=4, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2,
        patch_norm=True, out_indices=[1, 2, 3], with_cp=False, convert_weights=False),
    img_neck=dict(type='ProjLSSFPN', in_channels=[192, 384, 768], out_channels=256),
    view_transform=dict(
        type='ProjDepthLSSTransform', in_channels=256, out_channels=80, image_size=[256, 704], feature_size=[32, 88],
        xbound=[-54.0, 54.0, 0.3], ybound=[-54.0, 54.0, 0.3], zbound=[-10.0, 10.0, 20.0], dbound=[1.0, 60.0, 0.5]),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=5),
    pts_middle_encoder=dict(
        type='ProjBEVFusionSparseEncoder', in_channels=5, sparse_shape=[1440, 1440, 41], base_channels=16,
        output_channels=128, order=('conv', 'norm', 'act'),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)), (0, 0)), block_type='basicblock'),
    fusion_layer=dict(type='ProjConvFuser', in_channels=[80, 256], out_channels=256),
    pts_backbone=dict(
        type='SECOND', in_channels=256, out_channels=[128, 256], layer_nums=[5, 5], layer_strides=[1, 2],
        norm_cfg=dict(type='BN', eps=0.001, momentum=0.01), conv_cfg=dict(type='Conv2d', bias=False)),
    pts_neck=dict(
        type='SECONDFPN', in_channels=[128, 256], out_channels=[256, 256], upsample_strides=[1, 2],
        norm_cfg=dict(type='BN', eps=0.001, momentum=0.01), upsample_cfg=dict(type='deconv', bias=False),
        use_conv_for_no_stride=True),
    bbox_head=dict(type='ProjTransFusionHead', in_channels=512, hidden_channel=128, num_classes=10,
                   num_decoder_layers=1, num_heads=8, ffn_channels=256, head_conv=64))
