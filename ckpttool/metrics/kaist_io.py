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
_HAS_BOOL: dict = {}  # path -> whether its last read JSON text has a true/false literal
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
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(path, exc.lineno, f"invalid JSON: {exc.msg}")
    # numpy turns a JSON true/false among numbers into 1/0: files that have such a literal anywhere are checked
    # record by record instead (see _records)
    _HAS_BOOL[path] = "true" in text or "false" in text
    return data


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
    try:
        ids = [im["id"] for im in data["images"]]
        names = [im["im_name"] for im in data["images"]]
        ok = all(type(i) is int for i in ids) and all(type(n) is str for n in names)
    except (TypeError, KeyError):
        ok = False
    if not ok:
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or type(im.get("id")) is not int or not isinstance(im.get("im_name"), str):
                _fail(path, f"images[{i}]", "expected {'id': int, 'im_name': str}")
    order = np.argsort(ids, kind="stable")
    image_ids = np.asarray(ids, dtype=np.int64)[order]
    if len(np.unique(image_ids)) != len(image_ids):
        _fail(path, None, "duplicate image ids")
    names = [names[i] for i in order]
    anns = data["annotations"]
    arr = _records(path, anns, ("image_id", "height", "occlusion", "ignore", "id"), lambda i: f"annotations[{i}]",
                   defaults={"ignore": 0, "category_id": 1}, keep_category=True)
    keep = arr["category_id"] == 1
    box = arr["bbox"][keep]
    cols = {k: v[keep] for k, v in arr.items()}
    pos = np.searchsorted(image_ids, cols["image_id"])
    bad = (pos >= len(image_ids)) | (image_ids[np.minimum(pos, len(image_ids) - 1)] != cols["image_id"])
    if bad.any():
        _fail(path, None, f"an annotation refers to image_id {cols['image_id'][np.argmax(bad)]:g}, which is not in "
                          "'images'")
    return Annotations(path, image_ids, names, np.array([n[:5] in DAY_SETS for n in names]), pos,
                       box, cols["height"], cols["occlusion"].astype(np.int64), cols["ignore"] != 0,
                       cols["id"].astype(np.int64))


def _records(path, items, keys, where, defaults=(), keep_category=False):
    """The numeric fields ``keys`` and ``bbox`` of a list of json objects as float64 arrays, checked as whole
    arrays (numbers, finite, 4 box values); the first bad record is reported by ``where(index)``.

    Fast path: one list comprehension per field and one ``np.array`` each; anything odd (a missing key, a
    non-object, a string, a ragged box) falls to :func:`_scan`, which names the first bad record. Files with a
    JSON true/false literal are scanned first (numpy would read a bool among numbers as 1/0)."""
    defaults = dict(defaults)
    if _HAS_BOOL.pop(path, True):
        _scan(path, items, keys, where, defaults, complete=True)
    fields = list(keys) + (["category_id"] if keep_category or "category_id" in defaults else [])
    out = {}
    try:
        for key in fields:
            if key in defaults:
                col = [d.get(key, defaults[key]) for d in items]
            else:
                col = [d[key] for d in items]
            out[key] = _numeric(col, 1)
        out["bbox"] = _numeric([d["bbox"] for d in items], 2)
    except (TypeError, KeyError, AttributeError, ValueError):
        _scan(path, items, keys, where, defaults)
        raise  # _scan always fails on what made the fast path fail
    if out["bbox"].shape != (len(items), 4):
        _scan(path, items, keys, where, defaults)
    for key in fields:
        _first_bad(path, ~np.isfinite(out[key]), where, lambda k, key=key: f"'{key}' must be a finite number, "
                                                                            f"got {items[k].get(key)!r}")
    _first_bad(path, ~np.isfinite(out["bbox"]).all(axis=1), where,
               lambda k: f"'bbox' must be 4 finite numbers [x, y, w, h], got {items[k]['bbox']!r}")
    _first_bad(path, (out["bbox"][:, 2:] < 0).any(axis=1), where,
               lambda k: f"'bbox' width and height must not be negative, got {items[k]['bbox']!r}")
    return out


def _numeric(col, ndim):
    """``np.array(col)`` as float64 when it is numeric (strings, None, ragged lists fail; bools are ruled out by
    the caller)."""
    arr = np.array(col)
    if arr.dtype.kind not in "if" or arr.ndim != ndim:
        raise ValueError("not numeric")
    return arr.astype(np.float64, copy=False)


def _first_bad(path, bad, where, msg):
    if bad.any():
        k = int(np.argmax(bad))
        _fail(path, where(k), msg(k))


def _scan(path, items, keys, where, defaults, complete=False):
    """Slow path of :func:`_records`: the first record that is not an object of finite numbers."""
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            _fail(path, where(i), f"expected an object, got {type(d).__name__}")
        _box(path, where(i), d)
        for key in keys:
            _num(path, where(i), d if key not in defaults or key in d else {key: defaults[key]}, key)
        if "category_id" in d:
            _num(path, where(i), d, "category_id")
    if complete:
        return
    raise FormatError(f"{os.path.basename(path)}: unreadable records")  # not reached for real inputs


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
    _first_bad(path, (arr[:, 3:5] < 0).any(axis=1), lambda k: numbers[k] + 1,
               lambda k: "box width and height must not be negative")
    idx = arr[:, 0]
    n = int(ann.image_ids[-1]) + 1   # image_index - 1 is the image id (= the position in the full KAIST set)
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
    where = lambda k: f"item {k}"  # noqa: E731
    arr = _records(path, data, ("image_id", "score"), where, defaults={"category_id": 1})
    image_id = arr["image_id"]
    _first_bad(path, image_id != np.round(image_id), where,
               lambda k: f"image_id must be an integer, got {data[k]['image_id']!r}")
    kept = np.flatnonzero(arr["category_id"] == 1)
    img = _map_ids(path, ann, image_id[kept], lambda k: f"item {kept[k]}")
    return img, arr["bbox"][kept], arr["score"][kept]


def _from_mmdet(path, ann):
    from ckpttool.io import load_pickle

    data = load_pickle(path)
    if not isinstance(data, list) or not data:
        _fail(path, None, "expected a non-empty list of mmdet 3.x results (dicts with 'pred_instances')")
    where = lambda k: f"item {k}"  # noqa: E731
    try:
        preds = [item["pred_instances"] for item in data]
        cols = [[_array(p[k]) for p in preds] for k in ("bboxes", "scores", "labels")]
        img_paths = [str(item.get("img_path", "")) for item in data]
    except (TypeError, KeyError, AttributeError):
        for i, item in enumerate(data):
            pred = item.get("pred_instances") if isinstance(item, dict) else None
            if not isinstance(pred, dict) or not all(k in pred for k in ("bboxes", "scores", "labels")):
                _fail(path, where(i), "expected a dict with 'pred_instances' {bboxes, scores, labels}")
        raise
    img = image_index(ann, img_paths, lambda k: f"{os.path.basename(path)}:item {k}")
    counts = np.array([np.shape(b)[0] if np.ndim(b) else -1 for b in cols[0]], dtype=np.int64)
    shapes_ok = np.array([np.ndim(b) == 2 and np.shape(b)[1] == 4 and np.shape(s) == (n,) and np.shape(lab) == (n,)
                          for b, s, lab, n in zip(*cols, counts)]) | (counts == 0)
    _first_bad(path, ~shapes_ok, where, lambda k: (
        f"pred_instances shapes do not fit: bboxes {np.shape(cols[0][k])}, scores {np.shape(cols[1][k])}, "
        f"labels {np.shape(cols[2][k])}"))
    keep_items = counts > 0
    if not keep_items.any():
        _fail(path, None, "no detections")
    try:
        b, s, lab = (np.concatenate([np.asarray(c[i], dtype=np.float64).reshape(-1, 4) if j == 0
                                     else np.asarray(c[i], dtype=np.float64).reshape(-1)
                                     for i in np.flatnonzero(keep_items)]) for j, c in enumerate(cols))
    except (TypeError, ValueError):
        _fail(path, None, "pred_instances must hold numeric arrays")
    item_of = np.repeat(np.arange(len(data)), np.maximum(counts, 0))
    _first_bad(path, ~np.isfinite(np.column_stack([b, s])).all(axis=1), lambda k: where(item_of[k]),
               lambda k: "bboxes and scores must be finite numbers")
    _first_bad(path, (b[:, 2:] < b[:, :2]).any(axis=1), lambda k: where(item_of[k]),
               lambda k: f"bboxes are x1, y1, x2, y2 with x2 >= x1 and y2 >= y1, got {b[k].tolist()}")
    keep = lab == 0
    b, s = b[keep], s[keep]
    box = np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
    return img[item_of[keep]].astype(np.int64), box, s


def image_key(img_path: str):
    """``'setNN/VNNN/INNNNN'`` of a KAIST image path (``…/set06/V000/visible/I00019.jpg``), or None."""
    m = _NAME_RE.search(str(img_path))
    return "/".join(m.groups()) if m else None


def image_index(ann: Annotations, img_paths, where) -> np.ndarray:
    """Position in ``ann`` of each image path, matched by set/video/frame; an unknown image is a FormatError
    naming ``where(k)`` of the first one."""
    by_name = {n: i for i, n in enumerate(ann.im_names)}
    idx = np.array([by_name.get(image_key(p), -1) for p in img_paths], dtype=np.int64)
    if (idx < 0).any():
        k = int(np.argmax(idx < 0))
        raise FormatError(f"{where(k)}: img_path {img_paths[k]!r} names no image of the annotation file "
                          f"{os.path.basename(ann.path)}")
    return idx


def _array(value):
    return value.numpy() if hasattr(value, "numpy") else value
