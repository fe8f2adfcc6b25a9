"""Benchmark of `ckpt eval` against straightforward per-image Python loops.

    .venv/bin/python benchmarks/bench_eval.py [--repeat 3] [--no-dump] [--only-files]

KAIST: the full test set (2,252 images), three subsets (all/day/night), both protocols (plus AP@0.5), for every
shipped detection file; the baseline is `loop_kaist` below, a per-image loop over COCOeval-style matching (the
MLPD script's matching, with vectorised IoUs and without its reading). `--only-files`: the 16 result files of
issue 13 end to end, also against the MLPD script itself (`mlpd_script.py`, re-implemented step for step).
NTU60: 16,487 samples x 60 classes x 10 views, aggregated and scored at k = 1, 3, 5, 10 views.

`loop_kaist` and `loop_voc_ap` are also the independent reference the tests compare the vectorised code with.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

FPPI = {"mlpd": [0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000],
        "matlab": [10 ** (e / 4) for e in range(-8, 1)]}


def _by_image(ann, det):
    gts, dts = defaultdict(list), defaultdict(list)
    for g in range(len(ann.gt_img)):
        gts[int(ann.gt_img[g])].append(g)
    for d in range(len(det.img)):
        dts[int(det.img[d])].append(d)
    return gts, dts


def loop_kaist(ann, det, ignored):
    """{protocol: {subset: (MR, final recall)}} (fractions), COCOeval-style: for each subset, evaluate every image
    (IoU matrix, greedy matching one detection at a time), then accumulate under each protocol."""
    gts, dts = _by_image(ann, det)
    out = {"mlpd": {}, "matlab": {}}
    for sub, keep in (("all", lambda i: True), ("day", lambda i: ann.day[i]), ("night", lambda i: not ann.day[i])):
        imgs = [i for i in range(len(ann.image_ids)) if keep(i)]
        evals = [_evaluate_image(ann, det, ignored, gts[i], dts[i]) for i in imgs]
        for protocol in out:
            out[protocol][sub] = _accumulate(evals, len(imgs), protocol)
    return out


def _evaluate_image(ann, det, ignored, gt, dt):
    gt = sorted(gt, key=lambda g: bool(ignored[g]))                      # ignored last (stable)
    dt = sorted(dt, key=lambda d: -det.score[d])[:1000]                 # score descending (stable)
    gt_ign = np.array([bool(ignored[g]) for g in gt], dtype=bool)
    if not dt:
        return {"scores": [], "tp": [], "gt_ignore": gt_ign, "has_dets": False}
    d = det.box[dt]
    g = ann.gt_box[gt].reshape(-1, 4)
    iw = np.minimum(d[:, None, 0] + d[:, None, 2], g[None, :, 0] + g[None, :, 2]) - np.maximum(d[:, None, 0], g[:, 0])
    ih = np.minimum(d[:, None, 1] + d[:, None, 3], g[None, :, 1] + g[None, :, 3]) - np.maximum(d[:, None, 1], g[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    darea = (d[:, 2] * d[:, 3])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        over = np.where(inter > 0, np.where(gt_ign[None, :], inter / darea,
                                            inter / (darea + g[:, 2] * g[:, 3] - inter)), 0.0)
    used = np.zeros(len(gt), dtype=bool)
    scores, tp = [], []
    for k, di in enumerate(dt):
        best, bestg, bestm = 0.5, -1, 0
        for j in range(len(gt)):
            if used[j]:
                continue
            if bestm != 0 and gt_ign[j]:
                break
            if over[k, j] < best:
                continue
            best, bestg, bestm = over[k, j], j, (-1 if gt_ign[j] else 1)
        if bestm == -1:
            continue
        if bestm == 1:
            used[bestg] = True
        scores.append(det.score[di])
        tp.append((bestm == 1 and ann.gt_id[gt[bestg]] != 0, bestm == 1))   # (mlpd, matlab)
    return {"scores": scores, "tp": tp, "gt_ignore": gt_ign, "has_dets": True}


def _accumulate(evals, n_images, protocol):
    if protocol == "mlpd":
        evals = [e for e in evals if e["has_dets"]]
    npos = int(sum(np.count_nonzero(~e["gt_ignore"]) for e in evals))
    if not evals or npos == 0:
        return None, None
    scores = np.concatenate([np.asarray(e["scores"], dtype=np.float64) for e in evals])
    # mlpd: a match to the GT with id 0 is a false positive; matlab: any match to a regular GT is a true positive
    flags = [t[0] if protocol == "mlpd" else t[1] for e in evals for t in e["tp"]]
    tps = np.asarray(flags, dtype=bool)[np.argsort(-scores, kind="mergesort")]
    tp_sum = np.cumsum(tps).astype(np.float64)
    fp_sum = np.cumsum(~tps).astype(np.float64)
    fppi, recall = fp_sum / n_images, tp_sum / npos
    q = []
    for ref in FPPI[protocol]:
        i = int(np.searchsorted(fppi, ref, side="right")) - 1
        wrap = recall[-1] if protocol == "mlpd" and len(recall) else 0.0
        q.append(recall[i] if i >= 0 else wrap)
    miss = np.maximum(1e-10, 1 - np.array(q)) if protocol == "matlab" else 1 - np.array(q)
    with np.errstate(divide="ignore"):
        mr = float(np.exp(np.mean(np.log(miss))))
    final = recall[-1] if len(recall) else 0.0
    return mr, 1 - (1 - final) if protocol == "mlpd" else final


def loop_voc_ap(ann, det, ignored, subset):
    """AP@0.5 (11 points, area) as mmdetection's eval_map with tpfp_default, one image at a time."""
    keep = {"all": lambda i: True, "day": lambda i: ann.day[i], "night": lambda i: not ann.day[i]}[subset]
    by_gt, by_dt = _by_image(ann, det)
    scores, tps, fps, n_pos = [], [], [], 0
    for i in range(len(ann.image_ids)):
        if not keep(i):
            continue
        reg = [g for g in by_gt[i] if not ignored[g]]
        ign = [g for g in by_gt[i] if ignored[g]]
        n_pos += len(reg)
        gts = reg + ign
        ds = by_dt[i]
        tp, fp = [0.0] * len(ds), [0.0] * len(ds)
        covered = set()
        for k in np.argsort(-np.array([det.score[d] for d in ds], dtype=np.float32)):
            x, y, w, h = det.box[ds[k]]
            a = np.array([x, y, x + w, y + h], dtype=np.float32)
            best, bestg = -1.0, None
            for g in gts:
                gx, gy, gw, gh = ann.gt_box[g]
                b = np.array([gx, gy, gx + gw, gy + gh], dtype=np.float32)
                iw = max(min(a[2], b[2]) - max(a[0], b[0]) + np.float32(1), 0)
                ih = max(min(a[3], b[3]) - max(a[1], b[1]) + np.float32(1), 0)
                ov = iw * ih
                union = (a[2] - a[0] + np.float32(1)) * (a[3] - a[1] + np.float32(1)) \
                    + (b[2] - b[0] + np.float32(1)) * (b[3] - b[1] + np.float32(1)) - ov
                iou = np.float32(ov / max(union, np.float32(1e-6)))
                if iou > best:
                    best, bestg = iou, g
            if bestg is not None and best >= 0.5:
                if bestg in ign:
                    continue
                if bestg not in covered:
                    covered.add(bestg)
                    tp[k] = 1.0
                else:
                    fp[k] = 1.0
            else:
                fp[k] = 1.0
        scores += [det.score[d] for d in ds]
        tps += tp
        fps += fp
    if n_pos == 0:
        return 0.0, 0.0
    order = np.argsort(-np.array(scores, dtype=np.float32))
    tp = np.cumsum(np.array(tps, dtype=np.float32)[order])
    fp = np.cumsum(np.array(fps, dtype=np.float32)[order])
    rec = tp.astype(np.float64) / n_pos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float32).eps)
    ap11 = np.float32(0)
    for t in np.arange(0, 1 + 1e-3, 0.1):
        p = prec[rec >= t]
        ap11 = np.float32(ap11 + (p.max() if p.size else 0))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for k in range(len(mpre) - 1, 0, -1):
        mpre[k - 1] = max(mpre[k - 1], mpre[k])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(ap11 / np.float32(11)), float(np.float32(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))


def bench_kaist(repeat):
    from ckpttool.metrics.kaist import evaluate_detections, gt_ignored
    from ckpttool.metrics.kaist_io import load_annotations, load_detections

    data = os.path.join(ROOT, "fixtures", "kaist")
    ann = load_annotations(os.path.join(data, "KAIST_annotation.json"))
    ignored = gt_ignored(ann, "Reasonable")
    print(f"KAIST: {len(ann.image_ids)} images, 3 subsets x 2 protocols; best of {repeat} runs each")
    print(f"  {'method':10s} {'dets':>6s}  {'loop':>9s}  {'vectorised':>10s} {'ratio':>6s}  {'+ AP@0.5':>9s} {'ratio':>6s}")
    total = np.zeros(3)
    for path in sorted(glob.glob(os.path.join(data, "detections", "*_result.txt"))):
        det = load_detections(path, ann)
        t = np.array([min(_timed(lambda: loop_kaist(ann, det, ignored)) for _ in range(repeat)),
                      min(_timed(lambda: evaluate_detections(ann, det, "Reasonable", ap=False))
                          for _ in range(3 * repeat)),
                      min(_timed(lambda: evaluate_detections(ann, det, "Reasonable")) for _ in range(3 * repeat))])
        total += t
        print(f"  {det.name:10s} {len(det.score):6d}  {_ms(t[0])}  {_ms(t[1]):>10s} {t[0] / t[1]:5.1f}x  {_ms(t[2])} "
              f"{t[0] / t[2]:5.1f}x")
    print(f"  {'all files':17s}  {_ms(total[0])}  {_ms(total[1]):>10s} {total[0] / total[1]:5.1f}x  {_ms(total[2])} "
          f"{total[0] / total[2]:5.1f}x")


def kaist_result_files(directory):
    """The 16-file set of issue 13: the 4 published txt files and 12 COCO-style json files (each txt file as json
    three times, boxes jittered by a seeded +-1 px per copy; image_id 0-based). Returns the paths."""
    rng = np.random.default_rng(0)
    src = sorted(glob.glob(os.path.join(ROOT, "fixtures", "kaist", "detections", "*_result.txt")))
    paths = list(src)
    for path in src:
        arr = np.loadtxt(path, delimiter=",", ndmin=2)
        for copy in range(3):
            box = arr[:, 1:5] + rng.uniform(-1, 1, (len(arr), 4)) * (copy > 0)
            box[:, 2:] = np.maximum(box[:, 2:], 1.0)
            items = [{"image_id": int(a[0]) - 1, "category_id": 1, "bbox": [round(float(v), 4) for v in b],
                      "score": float(a[5])} for a, b in zip(arr, box)]
            out = os.path.join(directory, f"{os.path.basename(path).split('_')[0]}{copy}_result.json")
            with open(out, "w") as f:
                json.dump(items, f)
            paths.append(out)
    return paths


def _read_like_the_script(path):
    """How the MLPD script gets a result file into Python: json.load, or the txt lines split by hand."""
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    with open(path) as f:
        return [[float(v) for v in line.split(",")] for line in f if line.strip()]


def bench_kaist_files(repeat):
    """16 result files end to end (read, validate, all subsets x both protocols + AP@0.5) vs the MLPD script
    (`mlpd_script.py`: its evaluate() per file, step for step) and vs `loop_kaist` (the previous baseline: the
    script's reading, our reader, then the per-image loop for both protocols) on the same files. Wall and CPU
    time (the process's), best of the runs by wall."""
    import tempfile

    import mlpd_script
    from ckpttool.metrics.kaist import evaluate_kaist, gt_ignored
    from ckpttool.metrics.kaist_io import load_annotations, load_detections

    ann_path = os.path.join(ROOT, "fixtures", "kaist", "KAIST_annotation.json")
    with tempfile.TemporaryDirectory() as tmp:
        paths = kaist_result_files(tmp)
        ann = load_annotations(ann_path)
        n_box = sum(len(load_detections(p, ann).score) for p in paths)
        mb = sum(os.path.getsize(p) for p in paths if p.endswith(".json")) / 1e6
        ignored = gt_ignored(ann, "Reasonable")
        json_paths = [p for p in paths if p.endswith(".json")]

        def parse_only():
            for p in json_paths:
                with open(p, encoding="utf-8") as f:
                    json.loads(f.read())

        slow = max(1, repeat // 3)
        t_script = _best(lambda: [mlpd_script.evaluate(ann_path, p) for p in paths], slow)
        t_loop = _best(lambda: [(_read_like_the_script(p), loop_kaist(ann, load_detections(p, ann), ignored))
                                for p in paths], slow)
        t_ckpt = _best(lambda: evaluate_kaist(paths, ann_path), repeat)
        t_read = _best(lambda: [load_detections(p, ann) for p in json_paths], repeat)
        t_parse = _best(parse_only, repeat)
    print(f"KAIST result files: {len(paths)} files (4 txt + 12 json, {mb:.1f} MB of json), {n_box} boxes; "
          f"wall / CPU time")
    print(f"  the MLPD script (mlpd_script.py)       {_ms2(t_script)}")
    print(f"  per-image loop (loop_kaist)            {_ms2(t_loop)}")
    print(f"  ckpt eval --task kaist --preds         {_ms2(t_ckpt)}   {100 * t_ckpt[0] / t_script[0]:4.1f} % "
          f"({100 * t_ckpt[1] / t_script[1]:4.1f} % CPU) of the script (target <= 5 %), "
          f"{100 * t_ckpt[0] / t_loop[0]:4.1f} % of the loop")
    print(f"    of which reading the 12 json files   {_ms2(t_read)}")
    print(f"    of which json.loads alone (gc on)    {_ms2(t_parse)}")


def _best(fn, runs):
    """(wall, CPU) seconds of the run with the lowest wall time."""
    best = None
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        run = (time.perf_counter() - w, time.process_time() - c)
        best = run if best is None or run[0] < best[0] else best
    return best


def _ms2(t):
    return f"{_ms(t[0])} / {_ms(t[1])}"


def _ms(seconds):
    return f"{seconds * 1e3:6.1f} ms"


def ntu_scores():
    """NTU60-size scores: 16,487 samples x 10 views x 60 classes, and their labels."""
    rng = np.random.default_rng(0)
    n, c, v = 16487, 60, 10
    return rng.standard_normal((n, v, c), dtype=np.float32), rng.integers(0, c, n)


def write_ntu_dump(path, views, labels):
    """The scores as an mmaction2 `--dump` pickle: per sample a dict of torch tensors, pickled the way torch pickles
    them (each storage an embedded legacy torch file)."""
    import pickle

    import torch

    items = [{"pred_score": torch.from_numpy(views[i].copy()), "gt_label": torch.tensor([int(labels[i])])}
             for i in range(len(labels))]
    with open(path, "wb") as f:
        pickle.dump(items, f)


def bench_ntu(repeat, dump):
    from ckpttool.metrics.ntu import evaluate_ntu, evaluate_scores

    views, labels = ntu_scores()
    n, v, c = views.shape
    t = min(_timed(lambda: evaluate_scores({"joint": views}, labels, clips=[1, 3, 5, 10], aggregate="prob",
                                           per_class=True)) for _ in range(repeat))
    print(f"NTU60: {n} samples x {c} classes x {v} views, prob aggregation, clips 1,3,5,10, per-class: "
          f"{t * 1e3:.1f} ms (metrics on arrays)")
    if not dump:
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "results.pkl")
        write_ntu_dump(path, views, labels)
        t = min(_timed(lambda: evaluate_ntu([path], clips=[1, 3, 5, 10])) for _ in range(repeat))
        print(f"       the same from an mmaction2-style dump pickle ({os.path.getsize(path) / 2**20:.0f} MiB), "
              f"safe reader included: {t * 1e3:.0f} ms")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dump", action="store_true", help="skip timing the NTU60 dump pickle (needs torch)")
    parser.add_argument("--only-files", action="store_true", help="only the 16 KAIST result files benchmark")
    args = parser.parse_args()
    bench_kaist_files(args.repeat)
    if args.only_files:
        sys.exit(0)
    bench_kaist(args.repeat)
    bench_ntu(args.repeat, not args.no_dump)
