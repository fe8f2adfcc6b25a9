"""The KAIST annotation json with the raw ``setNN/VNNN/{visible,lwir}/INNNNN.jpg`` image layout."""
import json
import os.path as osp
from collections import defaultdict

from mmdet.datasets import BaseDetDataset
from mmdet.registry import DATASETS
from mmengine.fileio import get_local_path


@DATASETS.register_module()
class KaistPairedDataset(BaseDetDataset):
    METAINFO = {"classes": ("person",), "palette": [(220, 20, 60)]}

    def load_data_list(self):
        with get_local_path(self.ann_file, backend_args=self.backend_args) as local:
            with open(local, encoding="utf-8") as f:
                data = json.load(f)
        by_image = defaultdict(list)
        for a in data["annotations"]:
            by_image[a["image_id"]].append(a)
        root = self.data_prefix.get("img", "")
        out = []
        for im in data["images"]:
            set_, video, frame = im["im_name"].split("/")
            instances = []
            for a in by_image[im["id"]]:
                x, y, w, h = a["bbox"]
                if w < 1 or h < 1:
                    continue
                ignore = int(a.get("category_id", 1) != 1 or bool(a.get("ignore", 0)))
                instances.append({"bbox": [x, y, x + w, y + h], "bbox_label": 0, "ignore_flag": ignore})
            out.append({
                "img_id": im["id"],
                "img_path": osp.join(root, set_, video, "visible", frame + ".jpg"),
                "lwir_path": osp.join(root, set_, video, "lwir", frame + ".jpg"),
                "height": im.get("height", 512), "width": im.get("width", 640),
                "instances": instances,
            })
        return out

    def filter_data(self):
        if self.test_mode or not self.filter_cfg or not self.filter_cfg.get("filter_empty_gt", False):
            return self.data_list
        return [d for d in self.data_list if any(not i["ignore_flag"] for i in d["instances"])]
