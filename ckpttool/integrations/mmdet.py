"""mmdetection 3.x detectors on KAIST: a test-time-augmentation sweep where each distinct view runs once.

:func:`evaluate_detector` is ``ckpt eval CONFIG CHECKPOINT --task kaist``. The model side is what mmdetection's
``tools/test.py`` does: ``Config.fromfile`` + ``--cfg-options`` (``custom_imports`` resolved with the current
directory and ``project_root`` on ``sys.path``), the default scope, the test dataset through dataset wrappers,
``model.test_step`` on batches of one image, the config's ``test_evaluator``. Weights come through our reader.

A *setting* (``--tta``) is ``none``, ``flip``, ``scale:WxH[:WxH…]``, a ``+`` combination, or ``config`` (the
config's ``tta_pipeline``). It is a list of *views*; a view is one plain pipeline (the test pipeline with its
``Resize`` scale replaced and a ``RandomFlip`` added, or one branch of the config's ``TestTimeAug``). Views are
identified by what they do to the image (:func:`view_key`: resize scale / keep_ratio, flip direction, any other
transform verbatim), so ``none``, ``flip`` and ``flip+scale:…`` share their common views, and each distinct view
runs once per image. Per-view predictions are kept (in memory, and on disk with ``cache``); a setting with several
views is merged by the config's ``tta_model`` (mmdet ``DetTTAModel``: un-flip, NMS, ``max_per_img``) or, without
one, a ``DetTTAModel`` with the config's test NMS.

Rows: today's KAIST keys (:func:`ckpttool.metrics.kaist.evaluate_detections`) plus ``views`` and ``evaluator``
(the config's ``test_evaluator`` metrics under mmengine's names, e.g. ``pascal_voc/mAP``, as that evaluator
computes them). Images are matched to the annotation by the set/video/frame in ``img_path``; the tables cover the
images that were run (``--limit`` says so).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckpttool.errors import CkptError

CACHE_VERSION = 1
_META = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One ``--tta`` entry: ``flip`` adds flipped views, ``scales`` replaces the test scale (None: the config's),
    ``config``: the config's own ``tta_pipeline``."""

    name: str
    flip: bool = False
    scales: tuple | None = None
    config: bool = False


def parse_settings(text) -> list[Setting]:
    """``"none,flip,flip+scale:640x512:800x640,config"`` -> settings (duplicates dropped, order kept)."""
    items = text if isinstance(text, (list, tuple)) else [text]
    names = [p.strip() for item in items for p in str(item or "none").split(",") if p.strip()]
    out, seen = [], set()
    for name in names or ["none"]:
        setting = _parse_one(name)
        if setting.name not in seen:
            seen.add(setting.name)
            out.append(setting)
    return out


def _parse_one(name: str) -> Setting:
    if name == "none":
        return Setting("none")
    if name == "config":
        return Setting("config", config=True)
    flip, scales = False, None
    for part in name.split("+"):
        part = part.strip()
        if part == "flip" and not flip:
            flip = True
        elif part.startswith("scale:") and scales is None:
            scales = tuple(_scale(s, name) for s in part[len("scale:"):].split(":"))
            if not scales:
                raise CkptError(f"--tta {name!r}: scale: needs at least one WxH")
        else:
            raise CkptError(f"--tta {name!r}: expected none, flip, scale:WxH[:WxH...], a '+' combination "
                            "(flip+scale:640x512) or config")
    canonical = "+".join((["flip"] if flip else []) +
                         ([f"scale:{':'.join(f'{w}x{h}' for w, h in scales)}"] if scales else []))
    return Setting(canonical, flip=flip, scales=scales)


def _scale(text: str, name: str) -> tuple:
    w, sep, h = text.lower().partition("x")
    try:
        size = (int(w), int(h))
    except ValueError:
        size = None
    if not sep or size is None or min(size) < 1:
        raise CkptError(f"--tta {name!r}: scale {text!r} is not WxH (e.g. 640x512)")
    return size


# ---------------------------------------------------------------------------------------------------------------
# views: plain pipelines, identified by what they do
# ---------------------------------------------------------------------------------------------------------------
def _type(t) -> str:
    return str(t.get("type", "")).split(".")[-1]


def _is_resize(t) -> bool:
    return _type(t) in ("Resize", "FixScaleResize", "FixShapeResize")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def view_key(pipeline) -> str:
    """What a plain pipeline does to an image, as a string: resize scale and keep_ratio, flip direction, and
    every other transform except the loader, annotation loading, no-op flips and packing."""
    parts = []
    for t in pipeline[1:]:
        kind = _type(t)
        if kind in ("LoadAnnotations", "PackDetInputs"):
            continue
        if kind == "RandomFlip":
            prob = t.get("prob", None)
            if prob is None or (not isinstance(prob, (list, tuple)) and float(prob) <= 0):
                continue
            parts.append(f"flip:{t.get('direction', 'horizontal')}")
        elif _is_resize(t) and "scale" in t:
            s = t["scale"]
            s = tuple(int(v) for v in s) if isinstance(s, (list, tuple)) else int(s)
            w, h = (s, s) if isinstance(s, int) else s
            parts.append(f"{w}x{h}" + ("" if t.get("keep_ratio", False) else ":stretch"))
        else:
            parts.append(json.dumps(_plain(dict(t)), default=repr))
    return "+".join(parts) or "identity"


def _with_flip_meta(pack: dict) -> dict:
    pack = copy.deepcopy(pack)
    keys = pack.get("meta_keys")
    if keys is not None:
        pack["meta_keys"] = tuple(keys) + tuple(k for k in ("flip", "flip_direction") if k not in keys)
    return pack


def setting_views(setting: Setting, cfg, test_pipeline) -> list:
    """The plain pipelines of a setting, in the order its predictions are merged."""
    if setting.config:
        return config_tta_views(cfg)
    test_pipeline = [dict(t) for t in test_pipeline]
    at = [i for i, t in enumerate(test_pipeline) if _is_resize(t)]
    if not at:
        raise CkptError("the test pipeline has no Resize step: scale and flip views cannot be built from it")
    r = at[-1]
    scales = setting.scales or (None,)
    views = []
    for scale in scales:
        for flip in ((True, False) if setting.flip else (False,)):   # tools/test.py --tta order: flipped first
            p = copy.deepcopy(test_pipeline)
            if scale is not None:
                p[r]["scale"] = tuple(scale)
            p.insert(r + 1, dict(type="RandomFlip", prob=1.0 if flip else 0.0))
            p = [_with_flip_meta(t) if _type(t) == "PackDetInputs" else t for t in p]
            views.append(p)
    return views


def config_tta_views(cfg) -> list:
    """The config's ``tta_pipeline`` with its ``TestTimeAug`` expanded into one plain pipeline per branch
    (``itertools.product`` order, as mmcv's TestTimeAug runs them)."""
    import itertools

    if "tta_pipeline" not in cfg:
        raise CkptError("--tta config: the config has no tta_pipeline")
    tta = [dict(t) for t in cfg.tta_pipeline]
    at = [i for i, t in enumerate(tta) if _type(t) == "TestTimeAug"]
    if len(at) != 1:
        raise CkptError("--tta config: the tta_pipeline needs exactly one TestTimeAug step")
    i = at[0]
    branches = itertools.product(*[[dict(t) for t in group] for group in tta[i]["transforms"]])
    return [copy.deepcopy(tta[:i]) + [copy.deepcopy(t) for t in combo] + copy.deepcopy(tta[i + 1:])
            for combo in branches]


# ---------------------------------------------------------------------------------------------------------------
# model, data, TTA merging
# ---------------------------------------------------------------------------------------------------------------
def load_detector_config(config, cfg_options=None, project_root=None):
    """``Config.fromfile`` + ``--cfg-options`` with ``custom_imports`` resolved from the current directory and
    ``project_root`` (:func:`ckpttool.integrations.openmmlab.load_config`); an mmdet default scope."""
    from ckpttool.integrations.openmmlab import load_config

    cfg = load_config(config, cfg_options, project_root=project_root)
    if cfg.get("default_scope", "mmdet") != "mmdet":
        raise CkptError(f"{config}: default_scope is {cfg.get('default_scope')!r}; --task kaist runs mmdet models")
    return cfg


def _innermost(dataset_cfg):
    while "dataset" in dataset_cfg:
        dataset_cfg = dataset_cfg["dataset"]
    return dataset_cfg


def build_test_dataset(cfg):
    """The config's test dataset (wrappers included) with a no-op pipeline: views apply their own."""
    from mmdet.registry import DATASETS

    ds_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    pipeline = copy.deepcopy(_innermost(ds_cfg).get("pipeline", []))
    _innermost(ds_cfg)["pipeline"] = []
    try:
        dataset = DATASETS.build(ds_cfg)
    except Exception as exc:
        raise CkptError(f"cannot build the test dataset of the config: {type(exc).__name__}: {exc}") from exc
    return dataset, pipeline


def build_merger(cfg, model):
    """The config's ``tta_model`` around ``model``, or a ``DetTTAModel`` with the config's test NMS."""
    from mmdet.registry import MODELS

    tta = copy.deepcopy(cfg.get("tta_model")) if "tta_model" in cfg else None
    if tta is None:
        rcnn = (cfg.model.get("test_cfg") or {}).get("rcnn") or (cfg.model.get("test_cfg") or {})
        nms = rcnn.get("nms", dict(type="nms", iou_threshold=0.5))
        tta = dict(type="DetTTAModel", tta_cfg=dict(nms=nms, max_per_img=rcnn.get("max_per_img", 100)))
    tta["module"] = model
    return MODELS.build(tta)


def _count_view_passes(model):
    return getattr(model, "_ckpt_view_passes", 0)


@dataclass
class ViewResult:
    """Per-image predictions of one view (numpy, original image coordinates; flipped views not un-flipped)."""

    bboxes: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    meta: list = field(default_factory=list)

    def __len__(self):
        return len(self.bboxes)

    def add(self, sample):
        pred = sample.pred_instances
        self.bboxes.append(pred.bboxes.detach().cpu().numpy().astype(np.float32).reshape(-1, 4))
        self.scores.append(pred.scores.detach().cpu().numpy().astype(np.float32).reshape(-1))
        self.labels.append(pred.labels.detach().cpu().numpy().astype(np.int64).reshape(-1))
        self.meta.append({k: _plain_meta(sample.metainfo.get(k)) for k in _META if k in sample.metainfo})

    def sample(self, i):
        """Image ``i`` as a ``DetDataSample`` with ``pred_instances``."""
        import torch
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        meta = dict(self.meta[i])
        for k in ("ori_shape", "img_shape", "scale_factor"):
            if k in meta and meta[k] is not None:
                meta[k] = tuple(meta[k])
        ds = DetDataSample(metainfo=meta)
        pred = InstanceData()
        pred.bboxes = torch.from_numpy(self.bboxes[i].copy())
        pred.scores = torch.from_numpy(self.scores[i].copy())
        pred.labels = torch.from_numpy(self.labels[i].copy())
        ds.pred_instances = pred
        return ds


def _plain_meta(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return [_plain_meta(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


# ---------------------------------------------------------------------------------------------------------------
# per-view cache (one .npz per view, keyed like the recogniser score cache)
# ---------------------------------------------------------------------------------------------------------------
def _cache_key(fingerprint: dict, checkpoint_sha: str, view: str) -> str:
    payload = json.dumps({"v": CACHE_VERSION, "config": fingerprint, "checkpoint": checkpoint_sha, "view": view},
                         sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


def _cache_load(directory, key, img_paths):
    p = Path(directory) / f"view-{key[:24]}.npz"
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n = len(img_paths)
            if meta.get("key") != key or meta["img_paths"][:n] != list(img_paths):
                return None
            counts = z["counts"][:n]
            ends = np.cumsum(counts)
            starts = ends - counts
            res = ViewResult()
            for i in range(n):
                a, b = int(starts[i]), int(ends[i])
                res.bboxes.append(z["bboxes"][a:b])
                res.scores.append(z["scores"][a:b])
                res.labels.append(z["labels"][a:b])
                res.meta.append(meta["meta"][i])
    except Exception:  # unreadable or foreign: a miss, recomputed and overwritten
        return None
    return res


def _cache_save(directory, key, img_paths, res: ViewResult):
    import io

    from ckpttool.io.write import write_bytes

    meta = {"key": key, "img_paths": list(img_paths), "meta": res.meta}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), counts=np.array([len(s) for s in res.scores], dtype=np.int64),
             bboxes=np.concatenate(res.bboxes).reshape(-1, 4).astype(np.float32),
             scores=np.concatenate(res.scores).astype(np.float32),
             labels=np.concatenate(res.labels).astype(np.int64))
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_bytes(Path(directory) / f"view-{key[:24]}.npz", buf.getvalue(), force=True)


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def evaluate_model(config, checkpoint, ann=None, tta=None, split=None, views_per_batch=None, **options) -> dict:
    """``ckpt eval CONFIG CHECKPOINT --task kaist`` as :mod:`ckpttool.engine.evaluate` calls it."""
    if not ann:
        raise CkptError("--task kaist with CONFIG CHECKPOINT needs --ann KAIST_annotation.json")
    if split is not None:
        raise CkptError("--split: a detector runs the config's test_dataloader (use --cfg-options to change it)")
    if views_per_batch is not None:
        raise CkptError("--views-per-batch: detector views run as tools/test.py does, one image per forward pass")
    return evaluate_detector(config, checkpoint, ann, tta=tta or "none", **options)


def evaluate_detector(config, checkpoint, ann, tta="none", cfg_options=None, project_root=None, dump=None,
                      cache=None, device=None, launcher="none", limit=None, protocol="mlpd", setup="Reasonable",
                      curves=False) -> dict:
    """Run CONFIG + CHECKPOINT on its test set under each TTA setting; KAIST rows per setting (see module doc)."""
    from ckpttool.engine.dist import Dist
    from ckpttool.integrations.openmmlab import build_model, load_checkpoint, quiet_mmengine_logs, resolve_device
    from ckpttool.metrics import kaist as K
    from ckpttool.metrics.kaist_io import image_index, load_annotations

    if limit is not None and int(limit) < 1:
        raise CkptError("--limit must be a positive integer")
    if protocol not in K.PROTOCOLS:
        raise CkptError(f"unknown protocol {protocol!r}; choose mlpd or matlab")
    settings = parse_settings(tta)
    annotation = load_annotations(ann)
    device = resolve_device(device)   # cuda when torch sees one; one clear line for cuda without a GPU
    if dump and Path(dump).exists() and not Path(dump).is_dir():
        raise CkptError(f"--dump {dump}: exists and is not a directory")
    cfg = load_detector_config(config, cfg_options, project_root)
    t0 = time.perf_counter()
    with Dist(launcher, device) as dist, quiet_mmengine_logs():
        model = build_model(cfg, device)
        weights = load_checkpoint(model, checkpoint, strict=True)
        dataset, test_pipeline = build_test_dataset(cfg)
        n = len(dataset) if limit is None else min(len(dataset), int(limit))
        infos = [dataset.get_data_info(i) for i in range(n)]
        ann_index = image_index(annotation, [str(i.get("img_path", "")) for i in infos], lambda k: f"test image {k}")

        views_of = {s.name: setting_views(s, cfg, test_pipeline) for s in settings}
        distinct = {}
        for s in settings:
            for p in views_of[s.name]:
                distinct.setdefault(view_key(p), p)
        results, cached, passes, t_infer = _collect_views(cfg, model, checkpoint, distinct, infos, dist, cache)
        # every rank holds the gathered views: the rows are computed on each (as the engine does), files on rank 0
        merger = build_merger(cfg, model) if any(len(v) > 1 for v in views_of.values()) else None
        methods = []
        sub = _subset(annotation, ann_index)
        for s in settings:
            keys = [view_key(p) for p in views_of[s.name]]
            merged = _merge(keys, results, merger, n)
            methods.append(_setting_row(s.name, keys, merged, sub, cfg, dataset, infos, dist, protocol, setup,
                                        curves))
            if dump and dist.rank == 0:
                write_dumps(dump, s.name, merged, sub, ann_index)
    return {
        "task": "kaist", "mode": "model", "world_size": dist.world, "config": str(config),
        "checkpoint": str(checkpoint),
        "protocol": protocol, "setup": setup, "annotation": str(ann), "device": device,
        "limit": None if limit is None else n, "num_test_images": len(dataset),
        "num_images": {"all": int(len(sub.image_ids)), "day": int(sub.day.sum()), "night": int((~sub.day).sum())},
        "weights": {"loaded": weights["loaded"], "missing": weights["missing"], "unexpected": weights["unexpected"]},
        "views": {"distinct": list(distinct), "run": [k for k in distinct if k not in cached], "cached": cached,
                  "forward_passes": passes},
        "timing": {"total_s": time.perf_counter() - t0, "inference_s": t_infer,
                   "images_per_s": (passes / t_infer) if t_infer else None},
        "methods": methods,
    }


def _setting_row(name, keys, merged, sub, cfg, dataset, infos, dist, protocol, setup, curves) -> dict:
    """One setting's KAIST row (the keys of ``--preds`` rows) plus its ``views`` and the config's evaluator."""
    from ckpttool.metrics import kaist as K

    row = K.evaluate_detections(sub, _detections(sub, merged, name), setup, protocol if curves else None)
    head = row["protocols"][protocol]
    row = {"name": name, "MR": head["MR"], "recall": head["recall"], **row, "file": None, "views": keys,
           "evaluator": _run_evaluator(cfg, dataset, infos, merged, dist)}
    row["notes"] = K.explain(row)
    return row


def _collect_views(cfg, model, checkpoint, distinct: dict, infos, dist, cache):
    """Predictions of every distinct view: from the cache where it has them, else one pass over the images."""
    from ckpttool.io.hashing import digest
    from ckpttool.plain import plain

    img_paths = [str(info.get("img_path", "")) for info in infos]
    fingerprint = {"model": plain(cfg.model, max_depth=1000), "dataset": plain(
        {k: v for k, v in _innermost(cfg.test_dataloader.dataset).items() if k != "pipeline"}, max_depth=1000)}
    ck_sha = digest(checkpoint) if cache else None
    results, cached, passes, t_infer = {}, [], 0, 0.0
    for key, pipeline in distinct.items():
        cache_key = _cache_key(fingerprint, ck_sha, key) if cache else None
        hit = _cache_load(cache, cache_key, img_paths) if cache else None
        if hit is not None:
            results[key] = hit
            cached.append(key)
            continue
        t1 = time.perf_counter()
        results[key], k = _run_view(model, pipeline, infos, dist, f"view {key}")
        t_infer += time.perf_counter() - t1
        passes += k
        if cache and dist.rank == 0:
            _cache_save(cache, cache_key, img_paths, results[key])
    return results, cached, passes, t_infer


def _run_view(model, pipeline, infos, dist, label):
    """One view over this rank's images (``model.test_step`` on batches of one, as ``tools/test.py`` with the
    configs' batch size 1); gathered to every rank in image order."""
    import torch
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate

    from ckpttool.report.progress import bar

    compose = Compose(pipeline)
    mine = dist.shard(len(infos))
    res = ViewResult()
    with bar(len(mine), label, " images", None if dist.rank == 0 else False) as ticks, torch.no_grad():
        for i in mine:
            data = compose(copy.deepcopy(infos[i]))
            out = model.test_step(pseudo_collate([data]))
            res.add(out[0])
            ticks.update(1)
    parts = dist.gather((mine, res))
    if dist.world == 1:
        return res, len(mine)
    full = ViewResult()
    order = sorted((i, r, j) for idx, r in parts for j, i in enumerate(idx))
    for _, r, j in order:
        full.bboxes.append(r.bboxes[j])
        full.scores.append(r.scores[j])
        full.labels.append(r.labels[j])
        full.meta.append(r.meta[j])
    return full, sum(len(idx) for idx, _ in parts)


def _merge(keys, results, merger, n):
    """Per image, the setting's prediction: the single view's own, or the views merged by the TTA model."""
    if len(keys) == 1:
        return [results[keys[0]].sample(i) for i in range(n)]
    return merger.merge_preds([[results[k].sample(i) for k in keys] for i in range(n)])


def _subset(ann, index):
    """The annotation restricted to the images that were run (the tables' FPPI counts only those images)."""
    from ckpttool.metrics.kaist_io import Annotations

    keep = np.unique(index)
    pos = np.full(len(ann.image_ids), -1, dtype=np.int64)
    pos[keep] = np.arange(len(keep))
    g = np.isin(ann.gt_img, keep)
    return Annotations(ann.path, ann.image_ids[keep], [ann.im_names[i] for i in keep], ann.day[keep],
                       pos[ann.gt_img[g]], ann.gt_box[g], ann.gt_height[g], ann.gt_occ[g], ann.gt_ignore[g],
                       ann.gt_id[g])


def _detections(sub, merged, name):
    from ckpttool.metrics.kaist_io import Detections, image_index

    idx = image_index(sub, [s.metainfo.get("img_path", "") for s in merged], lambda k: f"test image {k}")
    imgs, boxes, scores = [], [], []
    for i, s in zip(idx, merged):
        p = s.pred_instances
        keep = p.labels.cpu().numpy() == 0
        b = p.bboxes.cpu().numpy().astype(np.float64)[keep]
        imgs.append(np.full(len(b), i, dtype=np.int64))
        boxes.append(np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]))
        scores.append(p.scores.cpu().numpy().astype(np.float64)[keep])
    return Detections(name, name, np.concatenate(imgs), np.concatenate(boxes).reshape(-1, 4),
                      np.concatenate(scores))


def _gt(info):
    """``gt_instances`` / ``ignored_instances`` as LoadAnnotations + PackDetInputs make them (original coords)."""
    import torch
    from mmengine.structures import InstanceData

    inst = info.get("instances", [])
    out = []
    for ignored in (False, True):
        sel = [x for x in inst if bool(x.get("ignore_flag", 0)) == ignored]
        d = InstanceData()
        d.bboxes = torch.from_numpy(np.array([x["bbox"] for x in sel], dtype=np.float32).reshape(-1, 4))
        d.labels = torch.from_numpy(np.array([x["bbox_label"] for x in sel], dtype=np.int64))
        out.append(d)
    return out


def _run_evaluator(cfg, dataset, infos, merged, dist) -> dict:
    """The config's ``test_evaluator`` on the merged predictions (its metrics under mmengine's names). Under
    torchrun each rank processes its own shard, and mmengine's ``Evaluator`` gathers them in sampler order."""
    from mmengine.evaluator import Evaluator

    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = dataset.metainfo
    samples = []
    from mmdet.structures import DetDataSample

    mine = dist.shard(len(infos)) if dist.world > 1 else range(len(infos))
    for i in mine:
        info, s = infos[i], merged[i]
        e = DetDataSample(metainfo=s.metainfo)
        e.pred_instances = s.pred_instances
        e.gt_instances, e.ignored_instances = _gt(info)
        samples.append(e)
    for i in range(0, len(samples), 64):
        evaluator.process(samples[i:i + 64])
    return {k: float(v) if isinstance(v, (int, float, np.floating)) else v
            for k, v in evaluator.evaluate(len(infos)).items()}


def dump_name(setting: str) -> str:
    """A file-name-safe form of a setting: ``flip+scale:640x512`` -> ``flip+scale-640x512``."""
    return setting.replace(":", "-").replace("/", "-")


def write_dumps(directory, setting, merged, sub, ann_index):
    """``DIR/<setting>_result.txt`` (``image_index(1-based),x,y,w,h,score``, images in annotation order, scores
    descending) and ``DIR/<setting>.pkl`` as ``tools/test.py --out`` writes it (mmdet's ``DumpDetResults``)."""
    import pickle

    from mmdet.evaluation import DumpDetResults

    from ckpttool.io.write import write_bytes

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    base = dump_name(setting)
    lines = []
    order = np.argsort(sub.image_ids[_positions(sub, merged)], kind="stable")
    pos = _positions(sub, merged)
    for j in order:
        p = merged[j].pred_instances
        keep = p.labels.cpu().numpy() == 0
        b = p.bboxes.cpu().numpy().astype(np.float64)[keep]
        s = p.scores.cpu().numpy().astype(np.float64)[keep]
        idx = int(sub.image_ids[pos[j]]) + 1
        for k in np.argsort(-s, kind="stable"):
            x1, y1, x2, y2 = b[k]
            lines.append(f"{idx},{x1:.4f},{y1:.4f},{x2 - x1:.4f},{y2 - y1:.4f},{s[k]:.8f}\n")
    write_bytes(d / f"{base}_result.txt", "".join(lines).encode(), force=True)
    # DumpDetResults.process makes the records; its compute_metrics would mmengine.dump them (pickle protocol 2)
    import logging

    from ckpttool.integrations.openmmlab import quiet_mmengine_logs

    with quiet_mmengine_logs(logging.ERROR):   # its "prefix is not set" warning would go to stdout
        dumper = DumpDetResults(out_file_path=str(d / f"{base}.pkl"))
    dumper.process({}, [s.to_dict() for s in merged])
    write_bytes(d / f"{base}.pkl", pickle.dumps(dumper.results, protocol=2), force=True)


def _positions(sub, merged):
    from ckpttool.metrics.kaist_io import image_index

    return image_index(sub, [s.metainfo.get("img_path", "") for s in merged], lambda k: f"test image {k}")
