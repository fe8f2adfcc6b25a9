# mmdet3d 1.x's shipped CenterPoint pillar config for nuScenes (resolved from the installed package through
# `mmdet3d::`), shrunk so that it builds and runs on the CPU in well under a second: a 25.6 m x 25.6 m point cloud
# range (128 x 128 pillars of 0.2 m) and narrow backbone / neck / head. Everything else (the data preprocessor's
# voxelisation, PillarFeatureNet, PointPillarsScatter, SECOND, SECONDFPN, CenterHead with its six nuScenes task
# groups, the bbox coder, test_cfg) is the shipped config's.
_base_ = ['mmdet3d::centerpoint/centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d.py']

point_cloud_range = [-12.8, -12.8, -5.0, 12.8, 12.8, 3.0]
grid = [128, 128]
model = dict(
    data_preprocessor=dict(
        voxel_layer=dict(point_cloud_range=point_cloud_range, max_voxels=(4000, 4000))),
    pts_voxel_encoder=dict(feat_channels=[16], point_cloud_range=point_cloud_range),
    pts_middle_encoder=dict(in_channels=16, output_shape=grid),
    pts_backbone=dict(in_channels=16, out_channels=[16, 32, 64], layer_nums=[1, 1, 1]),
    pts_neck=dict(in_channels=[16, 32, 64], out_channels=[32, 32, 32]),
    pts_bbox_head=dict(
        in_channels=96,
        share_conv_channel=16,
        bbox_coder=dict(pc_range=point_cloud_range[:2], post_center_range=[-20, -20, -10, 20, 20, 10])),
    train_cfg=dict(pts=dict(grid_size=[*grid, 1], point_cloud_range=point_cloud_range)),
    test_cfg=dict(pts=dict(pc_range=point_cloud_range[:2], post_center_limit_range=[-20, -20, -10, 20, 20, 10],
                           max_per_img=100, pre_max_size=200, post_max_size=50)))
