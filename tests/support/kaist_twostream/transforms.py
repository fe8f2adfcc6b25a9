"""Paired visible + lwir loading: one 6-channel image (visible BGR, then lwir BGR)."""
import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadKaistPair(BaseTransform):
    """Load ``results['img_path']`` (visible) and ``results['lwir_path']`` and stack them channel-wise."""

    def __init__(self, to_float32: bool = False):
        self.to_float32 = to_float32

    def transform(self, results: dict) -> dict:
        vis = mmcv.imread(results["img_path"], "color")
        lwir = mmcv.imread(results["lwir_path"], "color")
        if vis is None or lwir is None:
            raise FileNotFoundError(f"cannot read {results['img_path']} / {results['lwir_path']}")
        if vis.shape != lwir.shape:
            raise ValueError(f"visible {vis.shape} and lwir {lwir.shape} differ: {results['img_path']}")
        img = np.concatenate([vis, lwir], axis=2)
        if self.to_float32:
            img = img.astype(np.float32)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results

    def __repr__(self):
        return f"{type(self).__name__}(to_float32={self.to_float32})"
