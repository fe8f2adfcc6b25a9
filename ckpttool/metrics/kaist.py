"""KAIST pedestrian detection: log-average miss rate (MR^-2), recall and AP@0.5, vectorised with numpy.

``evaluate_kaist(preds, ann, protocol="mlpd", setup="Reasonable") -> dict`` is the entry point.

Matching (both protocols, as in the MLPD script and the Matlab toolbox's ``bbGt('evalRes')``): per image,
detections by descending score (stable), each takes the unmatched non-ignored GT of highest IoU >= 0.5 (the last
one on ties), else the first ignored GT with intersection/detection-area >= 0.5 (ignored GTs are never used up);
detections matched to ignored GTs are dropped. At most 1000 detections per image are used.

``mlpd`` reproduces the widely used Python script: FPPI points rounded to 4 decimals; images without any detection
are skipped (their GTs are not counted); a match to the GT whose id is 0 is a false positive; an FPPI point below
the first false positive takes the final recall. ``matlab`` follows the original toolbox: FPPI points
10^(-2:0.25:0), every image counts, recall 0 below the first point of the curve. The script requires detections
sorted by score within each image; this module sorts them, so unsorted files give the numbers the script gives
on the sorted file.

AP@0.5 follows mmdetection's ``VOCMetric``/``eval_map`` (legacy +1 pixel boxes in float32, ignored GTs as
``bboxes_ignore``, ``11points`` and ``area`` modes).

The greedy matching is done in rounds over the detections' rank within their image (round r handles every
image's r-th detection at once), so the Python loop runs max-detections-per-image times, not once per image.
"""
from __future__ import annotations

import numpy as np

from ckpttool.errors import CkptError
from ckpttool.metrics.constants import SETUPS
from ckpttool.metrics.kaist_io import Annotations, Detections, load_annotations, load_detections

BOUNDS = (5, 5, 635, 507)
FPPI_MLPD = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
FPPI_MATLAB = 10.0 ** np.arange(-2, 0.25, 0.25)
MAX_DETS = 1000
SUBSETS = ("all", "day", "night")
PROTOCOLS = ("mlpd", "matlab")


def gt_ignored(ann: Annotations, setup: str) -> np.ndarray:
    """The 'ignore' flag of every GT under a setup (Reasonable: height < 55, heavy occlusion, near the border)."""
    if setup not in SETUPS:
        raise CkptError(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")
    (h0, h1), occ = SETUPS[setup]
    x, y, w, h = ann.gt_box.T
    return (ann.gt_ignore | (ann.gt_height < h0) | (ann.gt_height > h1) | ~np.isin(ann.gt_occ, occ)
            | (x < BOUNDS[0]) | (y < BOUNDS[1]) | (x + w > BOUNDS[2]) | (y + h > BOUNDS[3]))


class _Layout:
    """Detections ranked by score within their image, and every (detection, GT of the same image) pair."""

    def __init__(self, ann: Annotations, det: Detections):
        n_img = len(ann.image_ids)
        order = _by_image_then_score(det.img, det.score)
        img = det.img[order]
        rank = np.arange(len(order)) - np.searchsorted(img, img)
        keep = rank < MAX_DETS
        # every per-detection array below is in this order: by image, then score descending (stable)
        self.file_index = order[keep]
        self.det_img, self.rank = img[keep], rank[keep]
        self.box, self.score = det.box[self.file_index], det.score[self.file_index]
        self.images_with_dets = np.bincount(self.det_img, minlength=n_img) > 0
        self.score_order = np.argsort(-self.score, kind="stable")   # the scripts' global order
        # GTs grouped by image, in annotation order; slot = position inside the image
        self.gt_order = np.argsort(ann.gt_img, kind="stable")
        counts = np.bincount(ann.gt_img, minlength=n_img)
        self.gt_start = np.cumsum(counts) - counts
        n_pairs = counts[self.det_img]
        pair_det = np.repeat(np.arange(len(keep)), n_pairs)
        first = np.cumsum(n_pairs) - n_pairs
        pair_slot = np.arange(len(pair_det)) - np.repeat(first, n_pairs)
        pair_gt = self.gt_order[self.gt_start[self.det_img[pair_det]] + pair_slot]
        dcol, gcol = np.ascontiguousarray(self.box.T), np.ascontiguousarray(ann.gt_box.T)
        # only pairs that (nearly) touch can reach an overlap of 0.5; -2 leaves room for VOC's +1 pixel boxes
        dx, dw, gx, gw = dcol[0, pair_det], dcol[2, pair_det], gcol[0, pair_gt], gcol[2, pair_gt]
        uw = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
        x = np.flatnonzero(uw > -2)
        pair_det, pair_slot, pair_gt = pair_det[x], pair_slot[x], pair_gt[x]
        dx, dw, gx, gw, uw = dx[x], dw[x], gx[x], gw[x], uw[x]
        dy, dh, gy, gh = dcol[1, pair_det], dcol[3, pair_det], gcol[1, pair_gt], gcol[3, pair_gt]
        uh = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
        y = np.flatnonzero(uh > -2)
        self.pair_det, self.pair_slot, self.pair_gt = pair_det[y], pair_slot[y], pair_gt[y]
        self.pair_boxes = np.stack([dx, dy, dw, dh, gx, gy, gw, gh])[:, y]   # x, y, w, h: detection, GT
        uw, uh = uw[y], uh[y]
        dw, dh, gw, gh = self.pair_boxes[[2, 3, 6, 7]]
        # float64, the MLPD script's arithmetic: IoU, and intersection / detection area for ignored GTs
        pos = (uw > 0) & (uh > 0)
        inter = np.where(pos, uw * uh, 0.0)
        darea = dw * dh
        with np.errstate(divide="ignore", invalid="ignore"):
            self.iou = np.where(pos, inter / (darea + gw * gh - inter), 0.0)
            self.ioa = np.where(pos, inter / darea, 0.0)


def _by_image_then_score(img, score):
    """Stable order by image, then descending score; files usually come that way already."""
    if len(img) < 2 or (np.all(img[1:] >= img[:-1]) and np.all((img[1:] != img[:-1]) | (score[1:] <= score[:-1]))):
        return np.arange(len(img))
    return np.lexsort((-score, img))


def _count_unsorted(det: Detections) -> int:
    """Images whose detections are not in descending score order in the file."""
    order = np.argsort(det.img, kind="stable")
    img, s = det.img[order], det.score[order]
    rising = (np.diff(img) == 0) & (np.diff(s) > 0)
    return len(np.unique(img[1:][rising]))


def match(lay: _Layout, ignored: np.ndarray):
    """Greedy matching. Returns (gt index per detection or -1, matched-to-ignored flag per detection).

    Only pairs with overlap >= 0.5 can match, so only they take part; round r handles the r-th such detection of
    every image at once (detections of different images never compete)."""
    n_det = len(lay.rank)
    gt = np.full(n_det, -1, dtype=np.int64)
    on_ignored = np.zeros(n_det, dtype=bool)
    ign = ignored[lay.pair_gt]
    over = np.where(ign, lay.ioa, lay.iou)
    live = np.flatnonzero(over >= 0.5)
    if not len(live):
        return gt, on_ignored
    det = lay.pair_det[live]
    # dets taking part (np.unique: by image and rank, the layout's order), renumbered inside their image
    order = np.unique(det)
    img = lay.det_img[order]
    round_of = np.empty(n_det, dtype=np.int64)
    round_of[order] = np.arange(len(order)) - np.searchsorted(img, img)
    p = live[np.lexsort((lay.pair_slot[live], det, round_of[det]))]   # by round, detection, slot
    p_det, p_gt, p_ign, p_over = lay.pair_det[p], lay.pair_gt[p], ign[p], over[p]
    p_round = round_of[p_det]
    bounds = np.searchsorted(p_round, np.arange(p_round[-1] + 2))
    seg_start = np.flatnonzero(np.concatenate(([True], p_det[1:] != p_det[:-1])))   # one segment per detection
    seg_of = np.cumsum(np.concatenate(([False], p_det[1:] != p_det[:-1])))
    seg_bounds = np.searchsorted(seg_start, bounds)
    pos = np.arange(len(p))
    used = np.zeros(len(ignored), dtype=bool)
    for r in range(len(bounds) - 1):
        a, b = bounds[r], bounds[r + 1]
        g, ig, ov, idx = p_gt[a:b], p_ign[a:b], p_over[a:b], pos[a:b]
        seg = seg_start[seg_bounds[r]:seg_bounds[r + 1]]
        d = p_det[seg]
        cand = ~ig & ~used[g]
        val = np.where(cand, ov, -1.0)
        best = np.maximum.reduceat(val, seg - a)
        last = np.maximum.reduceat(np.where(cand & (val == best[seg_of[a:b] - seg_bounds[r]]), idx, -1), seg - a)
        first_ign = np.minimum.reduceat(np.where(ig, idx, b), seg - a)
        to_ign = (last < 0) & (first_ign < b)   # no regular GT left: the first ignored one
        pick = np.where(to_ign, first_ign, last)
        hit = pick >= 0
        gt[d[hit]] = p_gt[pick[hit]]
        on_ignored[d[to_ign]] = True
        used[p_gt[pick[hit & ~to_ign]]] = True
    return gt, on_ignored


def _miss_rates(lay, ann, gt, on_ign, ignored, subset_mask, protocol):
    """(MR, final recall, curve fppi, curve miss rate) for the images in subset_mask under a protocol."""
    n_images = int(subset_mask.sum())
    sel = subset_mask[lay.det_img] & ~on_ign
    regular_gt = ~ignored & subset_mask[ann.gt_img]
    if protocol == "mlpd":
        regular_gt &= lay.images_with_dets[ann.gt_img]
        tp = sel & (gt >= 0)
        tp[tp] = ann.gt_id[gt[tp]] != 0
    else:
        tp = sel & (gt >= 0)
    npig = int(regular_gt.sum())
    if npig == 0 or (protocol == "mlpd" and not subset_mask[lay.det_img].any()):
        return None, None, np.zeros(0), np.zeros(0)   # the MLPD script reports -1 here
    order = lay.score_order[sel[lay.score_order]]
    tps = tp[order]
    tp_sum = np.cumsum(tps).astype(np.float64)
    fp_sum = np.cumsum(~tps).astype(np.float64)
    fppi = fp_sum / n_images
    recall = tp_sum / npig
    if protocol == "mlpd":
        at = np.searchsorted(fppi, FPPI_MLPD, side="right") - 1
        q = recall[at] if len(recall) else np.zeros(len(FPPI_MLPD))
        with np.errstate(divide="ignore"):
            mr = float(np.exp(np.mean(np.log(1 - q))))
        final = float(1 - (1 - recall[-1])) if len(recall) else 0.0
    else:
        at = np.searchsorted(fppi, FPPI_MATLAB, side="right") - 1
        q = np.where(at >= 0, recall[np.maximum(at, 0)] if len(recall) else 0.0, 0.0)
        mr = float(np.exp(np.mean(np.log(np.maximum(1e-10, 1 - q)))))
        final = float(tp_sum[-1] / npig) if len(recall) else 0.0
    return mr, final, fppi, 1 - recall


def voc_tpfp(lay, ann, ignored):
    """True/false positives per detection as mmdetection's ``tpfp_default`` with ``use_legacy_coordinate=True``.

    Returns (rows, tp, fp, score): detections ordered by image then file order (eval_map's input order)."""
    f32 = np.float32
    n_det = len(lay.rank)
    dx, dy, dw, dh, gx, gy, gw, gh = lay.pair_boxes
    dx1, dy1, dx2, dy2 = dx.astype(f32), dy.astype(f32), (dx + dw).astype(f32), (dy + dh).astype(f32)
    gx1, gy1, gx2, gy2 = gx.astype(f32), gy.astype(f32), (gx + gw).astype(f32), (gy + gh).astype(f32)
    area_d = (dx2 - dx1 + 1.0) * (dy2 - dy1 + 1.0)
    area_g = (gx2 - gx1 + 1.0) * (gy2 - gy1 + 1.0)
    ov = np.maximum(np.minimum(dx2, gx2) - np.maximum(dx1, gx1) + 1.0, 0) \
        * np.maximum(np.minimum(dy2, gy2) - np.maximum(dy1, gy1) + 1.0, 0)
    iou = ov / np.maximum(area_d + area_g - ov, 1e-6)
    # a detection hits when its best IoU is >= 0.5; the best is then among these pairs. eval_map stacks the
    # regular GTs before the ignored ones and takes the first maximum.
    live = np.flatnonzero(iou >= 0.5)
    ign = ignored[lay.pair_gt[live]]
    live = live[np.lexsort((lay.pair_slot[live], ign, -iou[live], lay.pair_det[live]))]
    ign = ignored[lay.pair_gt[live]]
    first = np.ones(len(live), dtype=bool)
    first[1:] = lay.pair_det[live][1:] != lay.pair_det[live][:-1]
    best, best_ign = live[first], ign[first]
    target = np.full(n_det, -1, dtype=np.int64)
    target[lay.pair_det[best[~best_ign]]] = lay.pair_gt[best[~best_ign]]
    to_ign = np.zeros(n_det, dtype=bool)
    to_ign[lay.pair_det[best[best_ign]]] = True
    score = lay.score.astype(f32)
    proc = _processing_order(lay, score, target)
    cand = proc[(target >= 0)[proc]]
    _, first_hit = np.unique(target[cand], return_index=True)
    tp = np.zeros(n_det, dtype=f32)
    tp[cand[first_hit]] = 1
    fp = (~to_ign).astype(f32) - tp
    fi = lay.file_index
    rows = np.arange(n_det) if np.all(fi[1:] > fi[:-1]) else np.lexsort((fi, lay.det_img))
    return rows, tp[rows], fp[rows], score[rows]


def _processing_order(lay, score, target):
    """Order in which tpfp_default visits detections: image by image, ``np.argsort(-score)`` of the image's
    detections in file order. Any order by descending float32 score gives the same true positives unless two
    detections of one image tie on score for the same GT; only such images are ordered again exactly."""
    order = np.arange(len(score))
    c = np.flatnonzero(target >= 0)
    c = c[np.lexsort((-score[c], target[c]))]
    tie = (np.diff(target[c]) == 0) & (np.diff(score[c]) == 0)
    starts = np.searchsorted(lay.det_img, np.arange(lay.det_img.max(initial=-1) + 2))
    for t in np.unique(lay.det_img[c[1:][tie]]):
        a, b = starts[t], starts[t + 1]
        in_file = np.argsort(lay.file_index[a:b])
        order[a:b] = a + in_file[np.argsort(-score[a:b][in_file])]
    return order


def average_precision(tpfp, lay, ann, ignored, subset_mask):
    """AP@0.5 over the images in subset_mask as mmdetection's eval_map: {'11points': .., 'area': ..}."""
    rows, tp, fp, score = tpfp
    keep = subset_mask[lay.det_img[rows]]
    num_gts = np.array([int((~ignored & subset_mask[ann.gt_img]).sum())])
    if num_gts[0] == 0:
        return {"11points": 0.0, "area": 0.0}
    sort_inds = np.argsort(-score[keep])
    tp, fp = np.cumsum(tp[keep][sort_inds]), np.cumsum(fp[keep][sort_inds])
    eps = np.finfo(np.float32).eps
    recalls = (tp[None] / np.maximum(num_gts[:, np.newaxis], eps))[0]
    precisions = tp / np.maximum((tp + fp), eps)
    return {"11points": _ap_11(recalls, precisions), "area": _ap_area(recalls, precisions)}


def _ap_area(recalls, precisions):
    zeros, ones = np.zeros(1, recalls.dtype), np.ones(1, recalls.dtype)
    mrec = np.hstack((zeros, recalls, ones))
    mpre = np.hstack((zeros, precisions, zeros))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    ind = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.float32(np.sum((mrec[ind + 1] - mrec[ind]) * mpre[ind + 1])))


def _ap_11(recalls, precisions):
    ap = np.zeros(1, dtype=np.float32)
    for thr in np.arange(0, 1 + 1e-3, 0.1):
        precs = precisions[recalls >= thr]
        ap[0] += precs.max() if precs.size > 0 else 0
    ap /= 11
    return float(ap[0])


def evaluate_detections(ann: Annotations, det: Detections, setup: str = "Reasonable",
                        curves: str | None = None, ap: bool = True) -> dict:
    """One method's row: MR and recall per subset under both protocols, AP@0.5 per subset (percentages).
    ``curves``: a protocol whose miss-rate/FPPI curves to add under "curves" (for plots)."""
    lay = _Layout(ann, det)
    ignored = gt_ignored(ann, setup)
    gt, on_ign = match(lay, ignored)
    masks = {"all": np.ones(len(ann.image_ids), bool), "day": ann.day, "night": ~ann.day}
    out = {"name": det.name, "file": det.path, "detections": int(len(det.score)),
           "protocols": {}, "AP50": {}, "AP50_area": {}}
    curve = {}
    for proto in PROTOCOLS:
        mr, rec = {}, {}
        for sub, mask in masks.items():
            m, r, fppi, miss = _miss_rates(lay, ann, gt, on_ign, ignored, mask, proto)
            mr[sub], rec[sub] = _pct(m), _pct(r)
            if proto == curves:
                curve[sub] = {"fppi": fppi, "miss_rate": miss}
        out["protocols"][proto] = {"MR": mr, "recall": rec}
    tpfp = voc_tpfp(lay, ann, ignored) if ap else None
    for sub, mask in masks.items() if ap else ():
        res = average_precision(tpfp, lay, ann, ignored, mask)
        out["AP50"][sub], out["AP50_area"][sub] = _pct(res["11points"]), _pct(res["area"])
    no_det = ~lay.images_with_dets
    lost = ~ignored & no_det[ann.gt_img]
    hit = (gt >= 0) & ~on_ign
    id0 = np.zeros(len(gt), dtype=bool)
    id0[hit] = ann.gt_id[gt[hit]] == 0
    out["images_without_detections"] = int(no_det.sum())
    out["unsorted_images"] = _count_unsorted(det)
    out["mlpd_differences"] = {sub: {"images_without_detections": int((no_det & mask).sum()),
                                     "gts_not_counted": int((lost & mask[ann.gt_img]).sum()),
                                     "gt_id0_matches": int((id0 & mask[lay.det_img]).sum())}
                               for sub, mask in masks.items()}
    if curves:
        out["curves"] = curve
    return out


def _pct(x):
    return None if x is None else 100.0 * x


def explain(row: dict, threshold: float = 0.5) -> list[str]:
    """Why mlpd and matlab differ by more than `threshold` MR points, one sentence per subset."""
    notes = []
    a, b = row["protocols"]["mlpd"]["MR"], row["protocols"]["matlab"]["MR"]
    for sub in SUBSETS:
        if a[sub] is None or b[sub] is None or abs(a[sub] - b[sub]) <= threshold:
            continue
        why, d = [], row["mlpd_differences"][sub]
        if d["gts_not_counted"]:
            why.append(f"{d['images_without_detections']} images have no detection: their {d['gts_not_counted']} "
                       "GTs are not counted under mlpd")
        if d["gt_id0_matches"]:
            why.append(f"{d['gt_id0_matches']} detection(s) matched to the GT with id 0 count as false positives "
                       "under mlpd")
        why.append("mlpd rounds the FPPI points and takes the final recall below the first false positive")
        notes.append(f"{row['name']} {sub}: MR {a[sub]:.2f} (mlpd) vs {b[sub]:.2f} (matlab): " + "; ".join(why))
    return notes


def evaluate_kaist(preds, ann_path: str, protocol: str = "mlpd", setup: str = "Reasonable",
                   curves: bool = False) -> dict:
    """Evaluate one or more detection files (txt / json / mmdet pkl) against a KAIST annotation json."""
    if protocol not in PROTOCOLS:
        raise CkptError(f"unknown protocol {protocol!r}; choose mlpd or matlab")
    if setup not in SETUPS:
        raise CkptError(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")
    if not preds:
        raise CkptError("no detection files given (--preds)")
    ann = load_annotations(ann_path)
    methods, seen = [], {}
    for path in preds:
        row = evaluate_detections(ann, load_detections(path, ann), setup, protocol if curves else None)
        n = seen[row["name"]] = seen.get(row["name"], 0) + 1
        if n > 1:
            row["name"] = f"{row['name']}#{n}"
        head = row["protocols"][protocol]
        row = {"name": row["name"], "MR": head["MR"], "recall": head["recall"], **row}
        row["notes"] = explain(row)
        methods.append(row)
    return {"task": "kaist", "protocol": protocol, "setup": setup, "annotation": ann_path,
            "num_images": {"all": int(len(ann.image_ids)), "day": int(ann.day.sum()),
                           "night": int((~ann.day).sum())},
            "methods": methods}
