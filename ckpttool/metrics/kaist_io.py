"""Reading KAIST annotations and detection files into flat numpy arrays.

Errors are `FormatError`s with one line that names the file and the line (txt) or item (json/pickle).

- annotation json: ``{"images": [{id, im_name}], "annotations": [{id, image_id, bbox [x,y,w,h], height,
  occlusion, ignore}]}`` (category 1 = person; other categories are dropped, as the MLPD script does)
- txt: ``image_index(1-based),x,y,w,h,score`` per line
- json: ``[{image_id (0-based), category_id, bbox [x,y,w,h], score}]``
- mmdet 3.x dump pickle: ``[{img_path, pred_instances: {bboxes (x1y1x2y2), scores, labels}}]``; label 0 is the
  person class; images are found by the ``setNN/VNNN/INNNNN`` name inside ``img_path``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from ckpttool.errors import FormatError

DAY_SETS = ("set06", "set07", "set08")
_NAME_RE = re.compile(r"(set\d\d)[/\\_-]+(V\d\d\d)[/\\_-]+(?:.*[/\\_-])?(I\d{5})")


@dataclass
class Annotations:
    path: str
    image_ids: np.ndarray   # (I,) int, sorted
    im_names: list
    day: np.ndarray         # (I,) bool
    gt_img: np.ndarray      # (G,) index into image_ids
    gt_box: np.ndarray      # (G, 4) float64 x, y, w, h
    gt_height: np.ndarray   # (G,) float64
    gt_occ: np.ndarray      # (G,) int
    gt_ignore: np.ndarray   # (G,) bool, the file's own flag
    gt_id: np.ndarray       # (G,) int


@dataclass
class Detections:
    path: str
    name: str
    img: np.ndarray    # (D,) index into Annotations.image_ids, in file order
    box: np.ndarray    # (D, 4) float64 x, y, w, h
    score: np.ndarray  # (D,) float64


def _fail(path, where, msg):
    loc = f"{os.path.basename(path)}:{where}" if where is not None else os.path.basename(path)
    raise FormatError(f"{loc}: {msg}")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        _fail(path, None, f"not UTF-8 text (byte {exc.start})")
    if not text.strip():
        _fail(path, None, "empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(path, exc.lineno, f"invalid JSON: {exc.msg}")


def _num(path, where, item, key):
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        _fail(path, where, f"'{key}' must be a finite number, got {value!r}")
    return value


def _box(path, where, item):
    b = item.get("bbox") if isinstance(item, dict) else None
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in b):
        _fail(path, where, f"'bbox' must be 4 finite numbers [x, y, w, h], got {b!r}")
    return b


def load_annotations(path: str) -> Annotations:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        _fail(path, None, "expected a KAIST annotation object with 'images' and 'annotations' lists")
    if not data["images"]:
        _fail(path, None, "no images")
    ids, names = [], []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or isinstance(im.get("id"), bool) or not isinstance(im.get("id"), int) \
                or not isinstance(im.get("im_name"), str):
            _fail(path, f"images[{i}]", "expected {'id': int, 'im_name': str}")
        ids.append(im["id"])
        names.append(im["im_name"])
    order = np.argsort(ids, kind="stable")
    image_ids = np.asarray(ids, dtype=np.int64)[order]
    if len(np.unique(image_ids)) != len(image_ids):
        _fail(path, None, "duplicate image ids")
    names = [names[i] for i in order]
    rows = []
    for i, a in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            _fail(path, where, "expected an object")
        if a.get("category_id", 1) != 1:
            continue
        box = _box(path, where, a)
        rows.append((_num(path, where, a, "image_id"), *box, _num(path, where, a, "height"),
                     _num(path, where, a, "occlusion"), a.get("ignore", 0), _num(path, where, a, "id")))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 9)
    pos = np.searchsorted(image_ids, arr[:, 0])
    bad = (pos >= len(image_ids)) | (image_ids[np.minimum(pos, len(image_ids) - 1)] != arr[:, 0])
    if bad.any():
        _fail(path, None, f"an annotation refers to image_id {arr[np.argmax(bad), 0]:g}, which is not in 'images'")
    return Annotations(path, image_ids, names, np.array([n[:5] in DAY_SETS for n in names]), pos,
                       arr[:, 1:5].copy(), arr[:, 5].copy(), arr[:, 6].astype(np.int64), arr[:, 7] != 0,
                       arr[:, 8].astype(np.int64))


def method_name(path: str) -> str:
    """'MLPD_result.txt' -> 'MLPD', as the MLPD script names methods."""
    return os.path.basename(path).split("_")[0].rsplit(".", 1)[0] or os.path.basename(path)


def load_detections(path: str, ann: Annotations) -> Detections:
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(".json"):
        img, box, score = _from_json(path, ann)
    elif lower.endswith((".pkl", ".pickle")):
        img, box, score = _from_mmdet(path, ann)
    else:
        img, box, score = _from_txt(path, ann)
    return Detections(path, method_name(path), img, box, score)


def _from_txt(path, ann):
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read as text: {exc}") from None
    numbers = [i for i, line in enumerate(lines) if line.strip()]
    if not numbers:
        _fail(path, None, "empty file (no detections)")
    parts = [lines[i].split(",") for i in numbers]
    widths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    if (widths != 6).any():
        k = int(np.argmax(widths != 6))
        _fail(path, numbers[k] + 1, f"expected 6 comma-separated values image_index,x,y,w,h,score, "
                                    f"got {widths[k]}")
    try:
        arr = np.array(parts, dtype=np.float64)
    except ValueError:
        for k, p in enumerate(parts):
            for v in p:
                try:
                    float(v)
                except ValueError:
                    _fail(path, numbers[k] + 1, f"not a number: {v.strip()!r}")
        raise
    _check_finite(path, arr, lambda k: numbers[k] + 1)
    idx = arr[:, 0]
    n = len(ann.image_ids)
    bad = (idx != np.round(idx)) | (idx < 1) | (idx > n)
    if bad.any():
        k = int(np.argmax(bad))
        _fail(path, numbers[k] + 1, f"image index {lines[numbers[k]].split(',')[0].strip()} out of range 1..{n}")
    img = _map_ids(path, ann, idx - 1, lambda k: numbers[k] + 1)
    return img, arr[:, 1:5].copy(), arr[:, 5].copy()


def _map_ids(path, ann, image_id, where):
    pos = np.searchsorted(ann.image_ids, image_id)
    pos_c = np.minimum(pos, len(ann.image_ids) - 1)
    bad = ann.image_ids[pos_c] != image_id
    if bad.any():
        k = int(np.argmax(bad))
        _fail(path, where(k), f"image_id {image_id[k]:g} is not in the annotation file")
    return pos_c


def _check_finite(path, arr, where):
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        _fail(path, where(int(np.argmax(bad))), "values must be finite numbers")


def _from_json(path, ann):
    data = _read_json(path)
    if not isinstance(data, list):
        _fail(path, None, f"expected a JSON list of {{image_id, bbox, score}} objects, got {type(data).__name__}")
    if not data:
        _fail(path, None, "empty list (no detections)")
    rows = []
    for i, d in enumerate(data):
        where = f"item {i}"
        if not isinstance(d, dict):
            _fail(path, where, f"expected an object {{image_id, bbox, score}}, got {type(d).__name__}")
        image_id = _num(path, where, d, "image_id")
        if image_id != int(image_id):
            _fail(path, where, f"image_id must be an integer, got {image_id!r}")
        box = _box(path, where, d)
        if d.get("category_id", 1) != 1:
            continue
        rows.append((image_id, *box, _num(path, where, d, "score")))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    kept = [i for i, d in enumerate(data) if d.get("category_id", 1) == 1]
    img = _map_ids(path, ann, arr[:, 0], lambda k: f"item {kept[k]}")
    return img, arr[:, 1:5].copy(), arr[:, 5].copy()


def _from_mmdet(path, ann):
    from ckpttool.io import load_pickle

    data = load_pickle(path)
    if not isinstance(data, list) or not data:
        _fail(path, None, "expected a non-empty list of mmdet 3.x results (dicts with 'pred_instances')")
    by_name = {n: i for i, n in enumerate(ann.im_names)}
    imgs, boxes, scores = [], [], []
    for i, item in enumerate(data):
        where = f"item {i}"
        pred = item.get("pred_instances") if isinstance(item, dict) else None
        if not isinstance(pred, dict) or not all(k in pred for k in ("bboxes", "scores", "labels")):
            _fail(path, where, "expected a dict with 'pred_instances' {bboxes, scores, labels}")
        m = _NAME_RE.search(str(item.get("img_path", "")))
        key = "/".join(m.groups()) if m else None
        if key not in by_name:
            _fail(path, where, f"img_path {item.get('img_path')!r} names no image of the annotation file")
        b, s, lab = (np.asarray(_array(pred[k]), dtype=np.float64) for k in ("bboxes", "scores", "labels"))
        if b.size == 0:
            continue
        if b.ndim != 2 or b.shape[1] != 4 or s.shape != (len(b),) or lab.shape != (len(b),):
            _fail(path, where, f"pred_instances shapes do not fit: bboxes {b.shape}, scores {s.shape}, "
                               f"labels {lab.shape}")
        keep = lab == 0
        b, s = b[keep], s[keep]
        imgs.append(np.full(len(b), by_name[key]))
        boxes.append(np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]))
        scores.append(s)
    if not imgs:
        _fail(path, None, "no detections")
    box = np.concatenate(boxes)
    score = np.concatenate(scores)
    _check_finite(path, np.column_stack([box, score]), lambda k: None)
    return np.concatenate(imgs).astype(np.int64), box, score


def _array(value):
    return value.numpy() if hasattr(value, "numpy") else value
