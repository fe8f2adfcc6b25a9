"""mmdetection 3.x detectors on KAIST: the detector task adapter, a test-time-augmentation sweep where each
distinct view runs once.

``ckpt eval CONFIG CHECKPOINT --task kaist`` is the engine's pipeline (:func:`ckpttool.engine.pipeline.evaluate`,
entry point :func:`ckpttool.engine.tasks.evaluate_detector`) with :class:`DetectorAdapter`. The model side is what mmdetection's
``tools/test.py`` does: ``Config.fromfile`` + ``--cfg-options`` (``custom_imports`` resolved with the current
directory and ``project_root`` on ``sys.path``), the default scope, the test dataset through dataset wrappers,
``model.test_step`` on batches of one image, the config's ``test_evaluator``. Weights come through our reader
(strict: a real mismatch is an error).

A *setting* (``--tta``) is ``none``, ``flip``, ``scale:WxH[:WxH…]``, a ``+`` combination, or ``config`` (the
config's ``tta_pipeline``). It is a list of *views*; a view is one plain pipeline (the test pipeline with its
``Resize`` scale replaced and a ``RandomFlip`` added, or one branch of the config's ``TestTimeAug``). Views are
identified by what they do to the image (:func:`view_key`: resize scale / keep_ratio, flip direction, any other
transform verbatim), so ``none``, ``flip`` and ``flip+scale:…`` share their common views, and each distinct view
runs once per image (its loading step once per image for all views). Per-view predictions are kept (in memory, and
with ``cache`` in the engine's per-view score cache: boxes, scores, labels and the image meta the merge needs); a
setting with several views is merged by the config's ``tta_model`` (mmdet ``DetTTAModel``: un-flip, NMS,
``max_per_img``) or, without one, a ``DetTTAModel`` with the config's test NMS.

Rows: today's KAIST keys (:func:`ckpttool.metrics.kaist.evaluate_detections`) plus ``views`` and ``evaluator``
(the config's ``test_evaluator`` metrics under mmengine's names, e.g. ``pascal_voc/mAP``, as that evaluator
computes them). Images are matched to the annotation by the set/video/frame in ``img_path``; the tables cover the
images that were run (``--limit`` says so).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ckpttool.errors import CkptError

# the image meta of a view kept with its predictions (the ``meta`` stream), as numbers: what DetTTAModel's merge
# (un-flip) and the dumps need; NaN where the pipeline did not set it
_META = ("ori_h", "ori_w", "img_h", "img_w", "scale_w", "scale_h", "flip", "flip_direction")
_DIRECTIONS = (None, "horizontal", "vertical", "diagonal")
_STREAMS = ["bboxes", "scores", "labels", "meta"]


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
            parts.append(_json(t))
    return "+".join(parts) or "identity"


def _json(transform) -> str:
    from ckpttool.plain import plain

    return json.dumps(plain(dict(transform)), sort_keys=True, default=repr)


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
# the task adapter
# ---------------------------------------------------------------------------------------------------------------
class DetectorAdapter:
    """The :class:`ckpttool.engine.adapter.TaskAdapter` of mmdetection detectors (KAIST tables): a setting is a
    :class:`Setting`, a view key a :func:`view_key`; a view is one image through one plain pipeline."""

    task = "kaist"
    cache_prefix = "view-"
    progress_label = "views"
    sample_unit = "images"

    def __init__(self, ann, protocol="mlpd", setup="Reasonable", curves=False):
        from ckpttool.metrics import kaist as K
        from ckpttool.metrics.kaist_io import load_annotations

        if protocol not in K.PROTOCOLS:
            raise CkptError(f"unknown protocol {protocol!r}; choose mlpd or matlab")
        self.ann_path, self.protocol, self.setup, self.curves = str(ann), protocol, setup, curves
        self.annotation = load_annotations(ann)
        self._names = {n: i for i, n in enumerate(self.annotation.im_names)}
        self.pipelines: dict = {}      # view key -> plain pipeline
        self.keys_of: dict = {}        # setting name -> its view keys, in merge order
        self.merged: dict = {}         # setting name -> per-image DetDataSamples (report -> dump)

    def settings(self, build, requested) -> list[Setting]:
        if build.cfg.get("default_scope", "mmdet") != "mmdet":
            raise CkptError(f"{build.config}: default_scope is {build.cfg.get('default_scope')!r}; --task kaist "
                            "runs mmdet models")
        from ckpttool.integrations.openmmlab import inner_dataset

        test_pipeline = inner_dataset(build.dataset_cfg).get("pipeline", [])
        chosen = parse_settings(requested or "none")
        for s in chosen:
            views = setting_views(s, build.cfg, test_pipeline)
            self.keys_of[s.name] = [view_key(p) for p in views]
            for key, p in zip(self.keys_of[s.name], views):
                self.pipelines.setdefault(key, p)
        return chosen

    def views(self, setting: Setting) -> list[str]:
        return self.keys_of[setting.name]

    def build_model(self, build, device: str):
        from ckpttool.integrations.openmmlab import build_model

        model = build_model(build.cfg, device)
        if not hasattr(model, "test_step"):
            raise CkptError(f"--task kaist runs mmdet detectors; this config builds {type(model).__name__}")
        return model

    def view_source(self, build, model, keys) -> "ImageViews":
        return ImageViews({k: self.pipelines[k] for k in keys})

    def streams(self, build, model) -> list[str]:
        return list(_STREAMS)

    def forward(self, model, inputs: list, streams) -> dict:
        """``model.test_step`` on the packed images (one per view): boxes, scores, labels (original image
        coordinates, flipped views not un-flipped) and the image meta, per view."""
        from mmengine.dataset import pseudo_collate

        out = model.test_step(pseudo_collate(inputs))
        preds = [s.pred_instances for s in out]
        return {"bboxes": [p.bboxes.detach().cpu().numpy().astype(np.float32).reshape(-1, 4) for p in preds],
                "scores": [p.scores.detach().cpu().numpy().astype(np.float32).reshape(-1) for p in preds],
                "labels": [p.labels.detach().cpu().numpy().astype(np.int64).reshape(-1) for p in preds],
                "meta": [_meta_vector(s.metainfo) for s in out]}

    def target(self, info: dict) -> str:
        """The image path (matched to the annotation by set/video/frame: an unknown image fails before it runs)."""
        from ckpttool.metrics.kaist_io import FormatError, image_key

        path = str(info.get("img_path", ""))
        if image_key(path) not in self._names:
            raise FormatError(f"test image {info.get('img_id', '?')}: img_path {path!r} names no image of the "
                              f"annotation file {Path(self.ann_path).name}")
        return path

    def report(self, build, settings, outputs) -> dict:
        from ckpttool.integrations.openmmlab import build_dataset
        from ckpttool.metrics.kaist_io import image_index

        results = outputs.results
        img_paths = [str(p) for p in next(iter(results.values()))[0]]
        dataset = build_dataset(build.dataset_cfg)
        infos = [dataset.get_data_info(i) for i in range(len(img_paths))]
        ann_index = image_index(self.annotation, img_paths, lambda k: f"test image {k}")
        sub = _subset(self.annotation, ann_index)
        merger = _merger(build.cfg) if any(len(self.keys_of[s.name]) > 1 for s in settings) else None
        methods = []
        for s in settings:
            keys = self.keys_of[s.name]
            self.merged[s.name] = _merge([_samples(results[k], infos) for k in keys], merger)
            methods.append(self._row(s.name, keys, self.merged[s.name], sub, build.cfg, dataset, infos))
        distinct = list(dict.fromkeys(k for s in settings for k in self.keys_of[s.name]))
        n = len(img_paths)
        return {"mode": "model", "protocol": self.protocol, "setup": self.setup, "annotation": self.ann_path,
                "limit": n if n < len(dataset) else None, "num_test_images": len(dataset),
                "num_images": {"all": int(len(sub.image_ids)), "day": int(sub.day.sum()),
                               "night": int((~sub.day).sum())},
                "views": {"distinct": distinct, "run": [k for k in distinct if k not in outputs.cached],
                          "cached": [k for k in distinct if k in outputs.cached], "forward_passes": outputs.passes},
                "methods": methods}

    def _row(self, name, keys, merged, sub, cfg, dataset, infos) -> dict:
        """One setting's KAIST row (the keys of ``--preds`` rows) plus its ``views`` and the config's evaluator."""
        from ckpttool.metrics import kaist as K

        row = K.evaluate_detections(sub, _detections(sub, merged, name), self.setup,
                                    self.protocol if self.curves else None)
        head = row["protocols"][self.protocol]
        row = {"name": name, "MR": head["MR"], "recall": head["recall"], **row, "file": None, "views": keys,
               "evaluator": _run_evaluator(cfg, dataset, infos, merged)}
        row["notes"] = K.explain(row)
        return row

    def dump(self, directory, build, settings, results) -> list[str]:
        from ckpttool.metrics.kaist_io import image_index

        img_paths = [str(p) for p in next(iter(results.values()))[0]]
        sub = _subset(self.annotation, image_index(self.annotation, img_paths, lambda k: f"test image {k}"))
        return [path for s in settings for path in write_dumps(directory, s.name, self.merged[s.name], sub)]


class ImageViews:
    """The :class:`ckpttool.engine.adapter.ViewSource` of a detector: each view key's plain pipeline, its loading
    step run once per image for all the views that share it (``decode_seconds``), the rest per view."""

    def __init__(self, pipelines: dict):
        from mmcv.transforms import Compose

        self.loaders: dict = {}     # loader json -> (Compose([loader]), [(key, Compose(rest))])
        for key, p in pipelines.items():
            entry = self.loaders.setdefault(_json(p[0]), (Compose(p[:1]), []))
            entry[1].append((key, Compose(p[1:])))
        self.decode_seconds = 0.0
        self.images = 0

    def sample(self, info: dict):
        for load, views in self.loaders.values():
            t0 = time.perf_counter()
            loaded = load(copy.deepcopy(info))
            self.decode_seconds += time.perf_counter() - t0
            self.images += 1
            for key, rest in views:
                yield key, [rest(copy.deepcopy(loaded))]

    def stats(self) -> dict:
        return {"decode": {"images_loaded": self.images}}


def _meta_vector(meta) -> np.ndarray:
    """A view's image meta as the numbers of ``_META`` (NaN where absent)."""
    ori, img, sf = (meta.get(k) for k in ("ori_shape", "img_shape", "scale_factor"))
    out = np.full(len(_META), np.nan)
    if ori is not None:
        out[0:2] = ori[:2]
    if img is not None:
        out[2:4] = img[:2]
    if sf is not None:
        out[4:6] = np.asarray(sf, dtype=np.float64).reshape(-1)[:2]
    if "flip" in meta:
        out[6] = float(bool(meta["flip"]))
        out[7] = _DIRECTIONS.index(meta.get("flip_direction"))
    return out


def _metainfo(vector, info: dict) -> dict:
    """The DetDataSample metainfo of a view: the dataset's image id and path, and its meta numbers."""
    v = np.asarray(vector, dtype=np.float64)
    meta = {"img_id": info.get("img_id"), "img_path": info.get("img_path")}
    for name, (a, b) in (("ori_shape", (0, 2)), ("img_shape", (2, 4))):
        if not np.isnan(v[a:b]).any():
            meta[name] = tuple(int(x) for x in v[a:b])
    if not np.isnan(v[4:6]).any():
        meta["scale_factor"] = tuple(float(x) for x in v[4:6])
    if not np.isnan(v[6]):
        meta["flip"], meta["flip_direction"] = bool(v[6]), _DIRECTIONS[int(v[7])]
    return meta


def _samples(result, infos) -> list:
    """One view's per-image predictions (``(targets, {stream: [n] lists of one view})``) as DetDataSamples."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    _, streams = result
    out = []
    for i, info in enumerate(infos):
        ds = DetDataSample(metainfo=_metainfo(streams["meta"][i][0], info))
        pred = InstanceData()
        pred.bboxes = torch.from_numpy(np.array(streams["bboxes"][i][0], dtype=np.float32).reshape(-1, 4))
        pred.scores = torch.from_numpy(np.array(streams["scores"][i][0], dtype=np.float32).reshape(-1))
        pred.labels = torch.from_numpy(np.array(streams["labels"][i][0], dtype=np.int64).reshape(-1))
        ds.pred_instances = pred
        out.append(ds)
    return out


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


def _merger(cfg):
    """:func:`build_merger` for merging stored predictions: ``merge_preds`` never runs the wrapped model, so a
    module that refuses to run stands in for it (a run served from the cache builds no model)."""
    import torch

    class StoredPredictions(torch.nn.Module):
        def test_step(self, data):
            raise RuntimeError("stored predictions are merged; no model runs here")

    return build_merger(cfg, StoredPredictions())


def _merge(per_view: list, merger) -> list:
    """Per image, the setting's prediction: the single view's own, or the views merged by the TTA model."""
    if len(per_view) == 1:
        return per_view[0]
    return merger.merge_preds([list(views) for views in zip(*per_view)])


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


def _run_evaluator(cfg, dataset, infos, merged) -> dict:
    """The config's ``test_evaluator`` on the merged predictions (its metrics under mmengine's names). Under
    torchrun each rank processes its part as mmengine's test loop does (``DefaultSampler``: padded to equal parts,
    interleaved), and the ``Evaluator`` gathers them in sampler order."""
    from mmdet.structures import DetDataSample
    from mmengine.dist import get_dist_info
    from mmengine.evaluator import Evaluator

    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = dataset.metainfo
    rank, world = get_dist_info()
    n = len(infos)
    total = -(-n // world) * world
    padded = (list(range(n)) * world)[:total]
    samples = []
    for i in padded[rank::world]:
        e = DetDataSample(metainfo=merged[i].metainfo)
        e.pred_instances = merged[i].pred_instances
        e.gt_instances, e.ignored_instances = _gt(infos[i])
        samples.append(e)
    for i in range(0, len(samples), 64):
        evaluator.process(samples[i:i + 64])
    return {k: float(v) if isinstance(v, (int, float, np.floating)) else v
            for k, v in evaluator.evaluate(n).items()}


def dump_name(setting: str) -> str:
    """A file-name-safe form of a setting: ``flip+scale:640x512`` -> ``flip+scale-640x512``."""
    return setting.replace(":", "-").replace("/", "-")


def write_dumps(directory, setting, merged, sub) -> list[str]:
    """``DIR/<setting>_result.txt`` (``image_index(1-based),x,y,w,h,score``, images in annotation order, scores
    descending) and ``DIR/<setting>.pkl`` as ``tools/test.py --out`` writes it (mmdet's ``DumpDetResults``)."""
    import pickle

    from mmdet.evaluation import DumpDetResults

    from ckpttool.io.write import write_bytes

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    base = dump_name(setting)
    lines = []
    pos = _positions(sub, merged)
    for j in np.argsort(sub.image_ids[pos], kind="stable"):
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
    return [str(d / f"{base}_result.txt"), str(d / f"{base}.pkl")]


def _positions(sub, merged):
    from ckpttool.metrics.kaist_io import image_index

    return image_index(sub, [s.metainfo.get("img_path", "") for s in merged], lambda k: f"test image {k}")
