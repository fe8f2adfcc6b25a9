"""mmdet3d 1.x models for the graft tests (tests/test_graft_mmdet3d.py, run in .venv-mmdet3d).

* ``PROJECT``: a user's project folder: ``centerpoint_pillar_tiny.py`` (mmdet3d's shipped CenterPoint pillar
  nuScenes config as `_base_`, shrunk for the CPU), ``centerpoint_pillar_tiny_map_gca.py`` (the same plus
  ``task_gca`` and a map head from the project module ``gca_project``, loaded through ``custom_imports``) and
  ``bevfusion_det.py`` (mmdet3d 1.x BEVFusion's module names and sizes, from ``bevfusion_project``),
  ``bevfusion_det_map_gca.py`` (the same plus task_gca and the map head) and ``bevfusion_lidar_tiny.py`` (its
  lidar branch, fuser and head at the layout fixtures' scale).
* ``points`` / ``sample``: synthetic nuScenes-like points (x, y, z, intensity, time lag) and their data sample.
* ``train_source``: a genuine mmengine checkpoint of the base detector: mmengine's Runner trains one iteration on
  synthetic points with boxes and its CheckpointHook writes ``iter_1.pth`` (meta, state_dict, message_hub,
  optimizer, param_schedulers). Run it in a subprocess (``python -m tests.support.mmdet3d_fixtures WORK_DIR``):
  the Runner seeds every generator of its process.
"""
from __future__ import annotations

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent / "mmdet3d_project"
BASE_CONFIG = PROJECT / "centerpoint_pillar_tiny.py"
GCA_CONFIG = PROJECT / "centerpoint_pillar_tiny_map_gca.py"
BEVFUSION_CONFIG = PROJECT / "bevfusion_det.py"
BEVFUSION_MAP_GCA_CONFIG = PROJECT / "bevfusion_det_map_gca.py"
BEVFUSION_TINY_CONFIG = PROJECT / "bevfusion_lidar_tiny.py"
RANGE = (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0)  # centerpoint_pillar_tiny.py's point_cloud_range


def points(n: int = 2000, seed: int = 0):
    """(n, 5) float32 points uniformly inside the tiny config's range."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(RANGE[:3]), torch.tensor(RANGE[3:])
    xyz = torch.rand(n, 3, generator=g) * (hi - lo) + lo
    return torch.cat([xyz, torch.rand(n, 2, generator=g)], dim=1)


def sample(with_boxes: bool = False):
    """A Det3DDataSample with the metainfo CenterHead reads; with ``with_boxes`` two ground-truth boxes (x, y, z,
    dx, dy, dz, yaw, vx, vy) of the classes car and pedestrian."""
    import torch
    from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
    from mmengine.structures import InstanceData

    s = Det3DDataSample(metainfo=dict(box_type_3d=LiDARInstance3DBoxes, sample_idx=0))
    if with_boxes:
        boxes = torch.tensor([[2.0, 3.0, -1.0, 4.2, 1.8, 1.6, 0.3, 1.0, 0.0],
                              [-5.0, -4.0, -1.0, 0.7, 0.7, 1.8, 0.0, 0.0, 0.5]])
        s.gt_instances_3d = InstanceData(bboxes_3d=LiDARInstance3DBoxes(boxes, box_dim=9),
                                         labels_3d=torch.tensor([0, 8]))
    return s


def train_source(work_dir) -> Path:
    """One training iteration of the base config's model by mmengine's Runner; returns its iter_1.pth."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    cfg = Config.fromfile(str(BASE_CONFIG))
    data = [dict(inputs=dict(points=points(seed=i)), data_samples=sample(with_boxes=True)) for i in range(2)]
    runner = Runner(model=cfg.model, work_dir=str(work_dir), cfg=cfg, default_scope="mmdet3d",
                    train_dataloader=DataLoader(data, batch_size=2, collate_fn=pseudo_collate),
                    train_cfg=dict(by_epoch=False, max_iters=1),
                    optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.01)),
                    default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1, by_epoch=False),
                                       logger=dict(type="LoggerHook", interval=1)),
                    randomness=dict(seed=0), log_level="WARNING")
    runner.train()
    return Path(work_dir) / "iter_1.pth"


if __name__ == "__main__":
    print(train_source(sys.argv[1]))
