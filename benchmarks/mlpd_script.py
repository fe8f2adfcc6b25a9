"""The MLPD evaluation script re-implemented step for step: the timing baseline of `bench_eval.py`.

The script (sejong-rcv/MLPD-Multi-Label-Pedestrian-Detection, `evaluation_script/evaluation_script.py` with its
copies of cocoapi's `coco.py` / `cocoeval.py`) is what KAIST papers run: `evaluate(annFile, rstFile)` builds a
`KAIST(COCO)` ground truth, loads the results (a txt file is converted to COCO json, written to a temporary file
with `indent=4` and read back), deep-copies one `KAISTPedEval(COCOeval)` per subset (all, day = the first 1,455
image ids, night) and runs `evaluate` (prepare the ignore flags, the IoU of every detection/GT pair of an image in
a Python double loop, greedy matching per image), `accumulate` and `summarize` on each. This module does the same
Python work in the same order on the same data structures (dicts per box, numpy scalars where the script has
them), for the Reasonable setup, without the script's prints and its figure. `evaluate(ann_path, result_path)`
returns what the script prints: ``{"all": MR, "day": MR, "night": MR, "recall": recall of all}`` (fractions).
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import tempfile
from collections import defaultdict

import numpy as np

FPPI = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
HEIGHT, OCCLUSION, BOUNDS = (55, 1e5 ** 2), (0, 1), (5, 5, 635, 507)   # setup 0, Reasonable
MAX_DETS, IOU = 1000, 0.5
DAY_IMAGES = 1455


class Coco:
    """cocoapi's COCO: the dataset dict and its indexes."""

    def __init__(self, dataset=None):
        self.dataset = dataset if dataset is not None else {}
        self.anns, self.imgs, self.cats = {}, {}, {}
        self.img_to_anns, self.cat_to_imgs = defaultdict(list), defaultdict(list)
        for ann in self.dataset.get("annotations", []):
            self.img_to_anns[ann["image_id"]].append(ann)
            self.anns[ann["id"]] = ann
        for img in self.dataset.get("images", []):
            self.imgs[img["id"]] = img
        for cat in self.dataset.get("categories", []):
            self.cats[cat["id"]] = cat
        if "annotations" in self.dataset and "categories" in self.dataset:
            for ann in self.dataset["annotations"]:
                self.cat_to_imgs[ann["category_id"]].append(ann["image_id"])

    def ann_ids(self, img_ids, cat_ids):
        lists = [self.img_to_anns[i] for i in img_ids if i in self.img_to_anns]
        anns = [a for a in itertools.chain.from_iterable(lists) if a["category_id"] in cat_ids]
        return [a["id"] for a in anns]

    def load_results(self, path):
        """KAIST.loadRes: txt -> json list -> temporary file -> COCO.loadRes."""
        if path.endswith(".txt"):
            fd, tmp = tempfile.mkstemp(suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(_txt_to_json(path), f, indent=4)
            try:
                return self.load_results(tmp)
            finally:
                os.remove(tmp)
        with open(path) as f:
            anns = json.load(f)
        assert type(anns) == list, "results in not an array of objects"
        ids = [ann["image_id"] for ann in anns]
        assert set(ids) == (set(ids) & set(self.imgs.keys())), "Results do not correspond to current coco set"
        dataset = {"images": [img for img in self.dataset["images"]],
                   "categories": copy.deepcopy(self.dataset["categories"])}
        for i, ann in enumerate(anns):
            bb = ann["bbox"]
            x1, x2, y1, y2 = [bb[0], bb[0] + bb[2], bb[1], bb[1] + bb[3]]
            if "segmentation" not in ann:
                ann["segmentation"] = [[x1, y1, x1, y2, x2, y2, x2, y1]]
            ann["area"] = bb[2] * bb[3]
            ann["id"] = i + 1
            ann["iscrowd"] = 0
        dataset["annotations"] = anns
        return Coco(dataset)


def _txt_to_json(path):
    out = []
    with open(path) as f:
        for line in f.readlines():
            info = [float(v) for v in line.split(",")]
            out.append({"image_id": info[0] - 1, "category_id": 1, "bbox": [info[1], info[2], info[3], info[4]],
                        "score": info[5]})
    return out


class PedEval:
    """KAISTPedEval for one subset of images (its params.imgIds)."""

    def __init__(self, gt: Coco, dt: Coco):
        self.gt, self.dt = gt, dt
        self.img_ids = sorted(gt.imgs.keys())
        self.cat_ids = sorted(gt.cats.keys())

    def evaluate(self):
        self.img_ids = list(np.unique(self.img_ids))
        self.cat_ids = list(np.unique(self.cat_ids))
        self._prepare()
        self.ious = {(i, c): self._compute_iou(i, c) for i in self.img_ids for c in self.cat_ids}
        self.eval_imgs = [self._evaluate_img(i, c) for c in self.cat_ids for i in self.img_ids]

    def _prepare(self):
        gts = [self.gt.anns[i] for i in self.gt.ann_ids(self.img_ids, self.cat_ids)]
        dts = [self.dt.anns[i] for i in self.dt.ann_ids(self.img_ids, self.cat_ids)]
        for g in gts:
            g["ignore"] = g["ignore"] if "ignore" in g else 0
            b = g["bbox"]
            g["ignore"] = 1 if g["height"] < HEIGHT[0] or g["height"] > HEIGHT[1] or g["occlusion"] not in OCCLUSION \
                or b[0] < BOUNDS[0] or b[1] < BOUNDS[1] or b[0] + b[2] > BOUNDS[2] or b[1] + b[3] > BOUNDS[3] \
                else g["ignore"]
        self._gts, self._dts = defaultdict(list), defaultdict(list)
        for g in gts:
            self._gts[g["image_id"], g["category_id"]].append(g)
        for d in dts:
            self._dts[d["image_id"], d["category_id"]].append(d)

    def _compute_iou(self, img, cat):
        gt, dt = self._gts[img, cat], self._dts[img, cat]
        if len(gt) == 0 and len(dt) == 0:
            return []
        inds = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in inds][:MAX_DETS]
        return _iou([d["bbox"] for d in dt], [g["bbox"] for g in gt], [int(g["ignore"]) for g in gt])

    def _evaluate_img(self, img, cat):
        gt, dt = self._gts[img, cat], self._dts[img, cat]
        if len(gt) == 0 and len(dt) == 0:
            return None
        for g in gt:
            g["_ignore"] = 1 if g["ignore"] else 0
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dtind = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dtind[0:MAX_DETS]]
        if len(dt) == 0:
            return None
        ious = self.ious[img, cat]
        ious = (ious[dtind, :] if len(ious) > 0 else ious)[:, gtind]
        gtm, dtm = np.zeros((1, len(gt))), np.zeros((1, len(dt)))
        gt_ig, dt_ig = np.array([g["_ignore"] for g in gt]), np.zeros((1, len(dt)))
        if len(ious):
            for dind, d in enumerate(dt):
                best_oa, bstg, bstm = min([IOU, 1 - 1e-10]), -2, -2
                for gind, g in enumerate(gt):
                    if gtm[0, gind] > 0:
                        continue
                    if bstm != -2 and gt_ig[gind] == 1:
                        break
                    if ious[dind, gind] < best_oa:
                        continue
                    best_oa, bstg, bstm = ious[dind, gind], gind, (1 if gt_ig[gind] == 0 else -1)
                if bstg == -2:
                    continue
                dt_ig[0, dind] = gt_ig[bstg]
                dtm[0, dind] = gt[bstg]["id"]
                if bstm == 1:
                    gtm[0, bstg] = d["id"]
        return {"image_id": img, "category_id": cat, "dtIds": [d["id"] for d in dt], "gtIds": [g["id"] for g in gt],
                "dtMatches": dtm, "gtMatches": gtm, "dtScores": [d["score"] for d in dt], "gtIgnore": gt_ig,
                "dtIgnore": dt_ig}

    def accumulate(self):
        ys = -np.ones((1, len(FPPI), 1, 1))
        self.yy = []
        n_img = len(self.img_ids)
        k0 = self.cat_ids.index(1)
        evals = [e for e in (self.eval_imgs[k0 * n_img + i] for i in range(n_img)) if e is not None]
        if not evals:
            return ys
        scores = np.concatenate([e["dtScores"][0:MAX_DETS] for e in evals])
        inds = np.argsort(-scores, kind="mergesort")
        dtm = np.concatenate([e["dtMatches"][:, 0:MAX_DETS] for e in evals], axis=1)[:, inds]
        dt_ig = np.concatenate([e["dtIgnore"][:, 0:MAX_DETS] for e in evals], axis=1)[:, inds]
        npig = np.count_nonzero(np.concatenate([e["gtIgnore"] for e in evals]) == 0)
        if npig == 0:
            return ys
        tps = np.logical_and(dtm, np.logical_not(dt_ig))
        fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
        keep = np.where(dt_ig == 0)[1]
        for tp, fp in zip(np.cumsum(tps[:, keep], axis=1).astype(np.float64),
                          np.cumsum(fps[:, keep], axis=1).astype(np.float64)):
            fppi, recall = np.array(fp) / n_img, np.array(tp) / npig
            self.yy.append(1 - recall)
            recall, q = recall.tolist(), np.zeros((len(FPPI),)).tolist()
            for i in range(len(tp) - 1, 0, -1):
                if recall[i] < recall[i - 1]:
                    recall[i - 1] = recall[i]
            try:
                for ri, pi in enumerate(np.searchsorted(fppi, FPPI, side="right") - 1):
                    q[ri] = recall[pi]
            except Exception:   # noqa: BLE001  (the script's own guard)
                pass
            ys[0, :, 0, 0] = np.array(q)
        return ys

    def summarize(self, ys):
        mrs = 1 - ys
        return -1 if len(mrs[mrs < 2]) == 0 else float(np.exp(np.mean(np.log(mrs[mrs < 2]))))


def _iou(dts, gts, crowd):
    dts, gts, crowd = np.asarray(dts), np.asarray(gts), np.asarray(crowd)
    ious = np.zeros((len(dts), len(gts)))
    for j, gt in enumerate(gts):
        gx1, gy1, gx2, gy2, garea = gt[0], gt[1], gt[0] + gt[2], gt[1] + gt[3], gt[2] * gt[3]
        for i, dt in enumerate(dts):
            dx1, dy1, dx2, dy2, darea = dt[0], dt[1], dt[0] + dt[2], dt[1] + dt[3], dt[2] * dt[3]
            uw = min(dx2, gx2) - max(dx1, gx1)
            if uw <= 0:
                continue
            uh = min(dy2, gy2) - max(dy1, gy1)
            if uh <= 0:
                continue
            t = uw * uh
            ious[i, j] = float(t) / (darea if crowd[j] else darea + garea - t)
    return ious


def evaluate(ann_path: str, result_path: str) -> dict:
    with open(ann_path) as f:
        gt = Coco(json.load(f))
    ev = PedEval(gt, gt.load_results(result_path))
    ev.cat_ids = [1]
    subsets = {"all": copy.deepcopy(ev), "day": copy.deepcopy(ev), "night": copy.deepcopy(ev)}
    img_ids = sorted(gt.imgs.keys())
    out = {}
    for name, ids in (("all", img_ids), ("day", img_ids[:DAY_IMAGES]), ("night", img_ids[DAY_IMAGES:])):
        sub = subsets[name]
        sub.img_ids = ids
        sub.evaluate()
        out[name] = sub.summarize(sub.accumulate())
    out["recall"] = float(1 - subsets["all"].yy[0][-1])
    return out
