# The BEVFusion user's new architecture: bevfusion_det.py plus task_gca.object / task_gca.map (two bias-free 1x1
# convs 512 -> 128 -> 512 each, 0.26M parameters) and a BEV map head (6 classes) on the 512-channel BEV features,
# from gca_project: 45.8M parameters, the published layout bevfusion_det_map_gca under mmdet3d 1.x names.
_base_ = ['./bevfusion_det.py']
custom_imports = dict(imports=['bevfusion_project', 'gca_project'], allow_failed_imports=False)
model = dict(
    type='ProjBEVFusionMapGCA',
    task_gca=dict(object=dict(type='TaskGCA', channels=512, reduction=4),
                  map=dict(type='TaskGCA', channels=512, reduction=4)),
    map_head=dict(type='BEVMapHead', in_channels=512, feat_channels=512, num_classes=6))
