# The user's project: the tiny CenterPoint pillar detector plus a BEV map head and per-task global context
# attention (task_gca.object gates the detection features, task_gca.map the map head's), from the project
# module `gca_project` (found through custom_imports: run from this folder or pass --project-root).
_base_ = ['./centerpoint_pillar_tiny.py']
custom_imports = dict(imports=['gca_project'], allow_failed_imports=False)

model = dict(
    type='CenterPointMapGCA',
    task_gca=dict(channels=96, reduction=4),
    map_head=dict(type='BEVMapHead', in_channels=96, feat_channels=32, num_classes=6))
