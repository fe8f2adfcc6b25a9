"""Reading KAIST annotations and detection files into flat numpy arrays.

Every error is a `FormatError` of one line that names the file and the first bad record: the line (txt), the item
(json; ``annotations[i]`` in the annotation file) or the item and box (mmdet pickle). Records are checked and
converted as whole numpy arrays (4 box values, finite numbers, width and height not negative, scores any finite
number (only their order counts: published files hold both confidences in [0, 1] and older detectors' unbounded
margins), integer image ids that the annotation knows); only a file that fails a cheap whole-file test (a value that is not
a number, a missing key, a ragged box, a JSON true/false) is walked record by record, to name the record.

- annotation json: ``{"images": [{id, im_name}], "annotations": [{id, image_id, bbox [x,y,w,h], height,
  occlusion, ignore}]}`` (category 1 = person; other categories are dropped, as the MLPD script does)
- txt: ``image_index(1-based),x,y,w,h,score`` per line (values read by ``float``, as the MLPD script reads them)
- json: ``[{image_id (0-based), category_id, bbox [x,y,w,h], score}]``
- mmdet 3.x dump pickle: ``[{img_path, pred_instances: {bboxes (x1y1x2y2), scores, labels}}]``; label 0 is the
  person class; images are found by the ``setNN/VNNN/INNNNN`` name inside ``img_path``.
"""
from __future__ import annotations

import gc
import json
import os
import re
from dataclasses import dataclass
from itertools import chain, compress
from operator import itemgetter, methodcaller

import numpy as np

from ckpttool.errors import FormatError

DAY_SETS = ("set06", "set07", "set08")
_NAME_RE = re.compile(r"(set\d\d)[/\\_-]+(V\d\d\d)[/\\_-]+(?:.*[/\\_-])?(I\d{5})")
_MMDET_FIELDS = ("bboxes", "scores", "labels")


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


def _first_bad(path, where, checks):
    """Fail on the first record any check flags, with the message of the first check that flags it.

    ``checks``: ``(bad, message)`` pairs, ``bad`` a bool array over the records (shorter arrays cover the first
    records), ``message(k)`` the text for record k; ``where(k)`` names record k."""
    flagged = [(int(np.argmax(bad)), i) for i, (bad, _) in enumerate(checks) if bad.any()]
    if flagged:
        k, i = min(flagged)
        _fail(path, where(k), checks[i][1](k))


def _at(n, k):
    """A bad-record mask that flags record ``k`` only (a problem found while walking the records)."""
    return np.arange(n) == k


def _show(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _lookup(image_ids, image_id):
    """(position of each of ``image_id`` in the sorted ``image_ids``, whether it is there)."""
    pos = np.minimum(np.searchsorted(image_ids, image_id), len(image_ids) - 1)
    return pos, image_ids[pos] == image_id


def _read_json(path):
    """(the parsed JSON, its text). The cyclic garbage collector pauses while the parser builds the 10^4-10^5
    small dicts and lists of a result file: the collections they would trigger find nothing to free and cost ~10 %
    of the parse."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        _fail(path, None, f"not UTF-8 text (byte {exc.start})")
    if not text.strip():
        _fail(path, None, "empty file")
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        _fail(path, exc.lineno, f"invalid JSON: {exc.msg}")
    except RecursionError:
        _fail(path, None, "invalid JSON: nested too deeply")
    finally:
        if enabled:
            gc.enable()


def load_annotations(path: str) -> Annotations:
    data, text = _read_json(path)
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
    cols, checks = _records(anns, text, ("image_id", "height", "occlusion", "ignore", "id", "category_id"),
                            defaults={"ignore": 0, "category_id": 1})
    pos, known = _lookup(image_ids, cols["image_id"])
    person = cols["category_id"] == 1
    checks.append((person & ~known, lambda k: f"image_id {_show(anns[k]['image_id'])} is not in 'images'"))
    _first_bad(path, lambda k: f"annotations[{k}]", checks)
    cols = {k: v[person] for k, v in cols.items()}
    return Annotations(path, image_ids, names, np.array([n[:5] in DAY_SETS for n in names]), pos[person],
                       cols["bbox"], cols["height"], cols["occlusion"].astype(np.int64), cols["ignore"] != 0,
                       cols["id"].astype(np.int64))


def _records(items, text, keys, defaults=()):
    """The numeric fields ``keys`` (``defaults``: key -> value when missing) and ``bbox`` (x, y, w, h) of a list
    of JSON objects as float64 arrays, and the checks of their values for :func:`_first_bad` (finite numbers,
    width and height not negative; the caller adds its own).

    Fast path: each field is one ``np.array`` over its values, gathered by ``map`` (no Python code runs per
    record). A field that does not come out numeric with the right shape (a missing key, a string, None, a
    ragged box, a record that is not an object) sends the file to :func:`_scan`, and so does a JSON true/false
    anywhere in the text (numpy would read a bool among numbers as 1/0); the scan converts the records up to the
    first bad one and adds a check that names it."""
    defaults = dict(defaults)
    cols = None if ("true" in text or "false" in text) else _columns(items, keys, defaults)
    problem = None
    if cols is None:
        cols, problem = _scan(items, keys, defaults)
    box = cols["bbox"]
    value = lambda k, key: _show(items[k].get(key, defaults.get(key)))  # noqa: E731
    checks = [(~np.isfinite(box).all(axis=1),
               lambda k: f"'bbox' must be 4 finite numbers [x, y, w, h], got {value(k, 'bbox')}")]
    checks += [(~np.isfinite(cols[key]), lambda k, key=key: f"'{key}' must be a finite number, got {value(k, key)}")
               for key in keys]
    checks.append(((box[:, 2:] < 0).any(axis=1),
                   lambda k: f"'bbox' width and height must not be negative, got {value(k, 'bbox')}"))
    if problem:
        k, msg = problem
        checks.append((_at(k + 1, k), lambda _: msg))
    return cols, checks


def _columns(items, keys, defaults):
    """Every field of ``_records`` as one float64 array, or None when one does not come out numeric (ints or
    floats) with the shape (N,) or, for 'bbox', (N, 4)."""
    n = len(items)
    try:
        cols = {key: np.array(_values(items, key, defaults)) for key in keys}
        boxes = list(map(itemgetter("bbox"), items))
        if (np.fromiter(map(len, boxes), dtype=np.int64, count=n) != 4).any():
            return None
        cols["bbox"] = np.array(list(chain.from_iterable(boxes))).reshape(n, 4)   # flat: numpy's fastest case
    except (TypeError, KeyError, AttributeError, ValueError, OverflowError):
        return None
    for key, col in cols.items():
        if col.dtype.kind not in "iuf" or col.shape != ((n, 4) if key == "bbox" else (n,)):
            return None
    return {key: col.astype(np.float64, copy=False) for key, col in cols.items()}


def _values(items, key, defaults):
    """``items[i][key]`` for every i (``defaults[key]`` where missing), gathered without Python code per item."""
    try:
        return list(map(itemgetter(key), items))
    except KeyError:
        if key not in defaults:
            raise
        return list(map(methodcaller("get", key, defaults[key]), items))


def _scan(items, keys, defaults):
    """Slow path of :func:`_records`, record by record: (the fields of the records before the first one that is
    not an object of numbers with a 4-number 'bbox', as float64 arrays; ``(index, problem)`` of that record, or
    None when there is none)."""
    rows, problem = [], None
    for i, d in enumerate(items):
        problem = _problem(d, keys, defaults)
        if problem:
            problem = (i, problem)
            break
        rows.append([float(d.get(key, defaults.get(key))) for key in keys] + [float(v) for v in d["bbox"]])
    arr = np.array(rows, dtype=np.float64).reshape(len(rows), len(keys) + 4)
    cols = {key: arr[:, j] for j, key in enumerate(keys)}
    cols["bbox"] = arr[:, len(keys):]
    return cols, problem


def _problem(d, keys, defaults):
    if not isinstance(d, dict):
        return f"expected an object, got {type(d).__name__}"
    b = d.get("bbox")
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(map(_is_number, b)):
        return f"'bbox' must be 4 finite numbers [x, y, w, h], got {_show(b)}"
    for key in keys:
        v = d.get(key, defaults.get(key))
        if not _is_number(v):
            return f"'{key}' must be a finite number, got {_show(v)}"
    return None


def _is_number(v):
    """An int or float (not a bool) that a float64 holds; whether it is finite is checked on the arrays."""
    return type(v) is float or (type(v) is int and -1e308 < v < 1e308)


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
    """Lines split and converted as one list: ``float`` over all values (as the MLPD script reads them), one
    ``np.array``; the first line that does not have 6 numbers is named."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read as text: {exc}") from None
    filled = np.fromiter(map(bool, map(str.strip, lines)), dtype=bool, count=len(lines))
    numbers = np.flatnonzero(filled)           # the 0-based line of each record
    if not len(numbers):
        _fail(path, None, "empty file (no detections)")
    rows = lines if len(numbers) == len(lines) else list(compress(lines, filled))
    widths = np.fromiter(map(methodcaller("count", ","), rows), dtype=np.int64, count=len(rows)) + 1
    ok = int(np.argmax(widths != 6)) if (widths != 6).any() else len(rows)   # rows before the first bad one
    problem = f"expected 6 comma-separated values image_index,x,y,w,h,score, got {widths[ok]}" \
        if ok < len(rows) else None
    tokens = ",".join(rows[:ok]).split(",") if ok else []
    try:
        values = list(map(float, tokens))
    except ValueError:
        t = next(i for i, v in enumerate(tokens) if not _is_float(v))
        ok, problem = t // 6, f"not a number: {tokens[t].strip()!r}"
        values = list(map(float, tokens[:6 * ok]))
    arr = np.array(values, dtype=np.float64).reshape(ok, 6)
    idx, box, score = arr[:, 0], arr[:, 1:5], arr[:, 5]
    value = lambda k, j: rows[k].split(",")[j].strip()  # noqa: E731
    n = int(ann.image_ids[-1]) + 1   # image_index - 1 is the image id (= the position in the full KAIST set)
    pos, known = _lookup(ann.image_ids, idx - 1)
    checks = [(~np.isfinite(arr).all(axis=1), lambda k: "values must be finite numbers"),
              ((box[:, 2:] < 0).any(axis=1), lambda k: "box width and height must not be negative"),
              (idx != np.round(idx), lambda k: f"image index must be an integer, got {value(k, 0)}"),
              ((idx < 1) | (idx > n), lambda k: f"image index {value(k, 0)} out of range 1..{n}"),
              (~known, lambda k: f"image index {value(k, 0)} names no image of the annotation file")]
    if problem:
        checks.append((_at(ok + 1, ok), lambda _: problem))
    _first_bad(path, lambda k: int(numbers[k]) + 1, checks)
    return pos, box.copy(), score.copy()


def _is_float(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _from_json(path, ann):
    data, text = _read_json(path)
    if not isinstance(data, list):
        _fail(path, None, f"expected a JSON list of {{image_id, bbox, score}} objects, got {type(data).__name__}")
    if not data:
        _fail(path, None, "empty list (no detections)")
    cols, checks = _records(data, text, ("image_id", "score", "category_id"), defaults={"category_id": 1})
    image_id, score = cols["image_id"], cols["score"]
    pos, known = _lookup(ann.image_ids, image_id)
    person = cols["category_id"] == 1
    checks += [(image_id != np.round(image_id),
                lambda k: f"image_id must be an integer, got {_show(data[k]['image_id'])}"),
               (person & ~known, lambda k: f"image_id {_show(data[k]['image_id'])} is not in the annotation file")]
    _first_bad(path, lambda k: f"item {k}", checks)
    return pos[person], cols["bbox"][person], score[person]


def _from_mmdet(path, ann):
    """A ``tools/test.py --out`` pickle through the safe reader: each item's three arrays checked for shape, then
    all boxes at once (finite, x2 >= x1 and y2 >= y1, finite scores); errors name the item, and the box in it."""
    from ckpttool.io import load_pickle

    data = load_pickle(path)
    if not isinstance(data, list) or not data:
        _fail(path, None, "expected a non-empty list of mmdet 3.x results (dicts with 'pred_instances')")
    img, ok, problem, cols = _mmdet_items(data, ann)
    counts = np.array([len(b) for b in cols[0]], dtype=np.int64)
    b, s, lab = (np.concatenate(c) if c else np.zeros((0, 4) if j == 0 else 0) for j, c in enumerate(cols))
    item_of = np.repeat(np.arange(ok), counts)
    box_of = np.arange(len(s)) - np.repeat(np.cumsum(counts) - counts, counts)
    _first_bad(path, lambda k: f"item {item_of[k]}, box {box_of[k]}", [
        (~np.isfinite(b).all(axis=1), lambda k: f"bboxes must be finite numbers, got {_show(b[k].tolist())}"),
        (~np.isfinite(s), lambda k: f"scores must be finite numbers, got {s[k]!r}"),
        ((b[:, 2:] < b[:, :2]).any(axis=1),
         lambda k: f"bboxes are x1, y1, x2, y2 with x2 >= x1 and y2 >= y1, got {_show(b[k].tolist())}"),
        (lab != np.round(lab), lambda k: f"labels must be integers, got {lab[k]!r}")])
    if problem:
        _fail(path, f"item {ok}", problem)
    if not len(s):
        _fail(path, None, "no detections")
    keep = lab == 0
    b, s = b[keep], s[keep]
    box = np.column_stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
    return img[item_of[keep]], box, s


def _mmdet_items(data, ann):
    """(position of each item's image in the annotation (-1: unknown), the number of items before the first bad
    one, its problem or None, ([bboxes (n, 4)], [scores], [labels]) of those items as float64 arrays). One pass
    over the items (images), none over the boxes."""
    img = _image_positions(ann, [str(item.get("img_path", "")) if isinstance(item, dict) else "" for item in data])
    cols = ([], [], [])
    for i, item in enumerate(data):
        pred = item.get("pred_instances") if isinstance(item, dict) else None
        if not isinstance(pred, dict) or not all(k in pred for k in _MMDET_FIELDS):
            return img, i, "expected a dict with 'pred_instances' {bboxes, scores, labels}", cols
        if img[i] < 0:
            return img, i, (f"img_path {_show(item.get('img_path'))} names no image of the annotation file "
                            f"{os.path.basename(ann.path)}"), cols
        arrays = [np.asarray(_array(pred[k])) for k in _MMDET_FIELDS]
        if any(a.dtype.kind not in "biuf" for a in arrays):
            return img, i, "pred_instances must hold numeric arrays", cols
        n = len(arrays[0]) if arrays[0].ndim else -1
        if not (arrays[0].shape == (n, 4) and arrays[1].shape == arrays[2].shape == (n,)) \
                and not all(a.size == 0 for a in arrays):
            return img, i, (f"pred_instances shapes do not fit: bboxes {arrays[0].shape}, "
                            f"scores {arrays[1].shape}, labels {arrays[2].shape}"), cols
        for col, a, shape in zip(cols, arrays, ((-1, 4), (-1,), (-1,))):
            col.append(a.astype(np.float64).reshape(shape))
    return img, len(data), None, cols


def image_key(img_path: str):
    """``'setNN/VNNN/INNNNN'`` of a KAIST image path (``…/set06/V000/visible/I00019.jpg``), or None."""
    m = _NAME_RE.search(str(img_path))
    return "/".join(m.groups()) if m else None


def image_index(ann: Annotations, img_paths, where) -> np.ndarray:
    """Position in ``ann`` of each image path, matched by set/video/frame; an unknown image is a FormatError
    naming ``where(k)`` of the first one."""
    idx = _image_positions(ann, img_paths)
    if (idx < 0).any():
        k = int(np.argmax(idx < 0))
        raise FormatError(f"{where(k)}: img_path {img_paths[k]!r} names no image of the annotation file "
                          f"{os.path.basename(ann.path)}")
    return idx


def _image_positions(ann: Annotations, img_paths) -> np.ndarray:
    """Position in ``ann`` of each image path (-1 where the annotation does not know it)."""
    by_name = {n: i for i, n in enumerate(ann.im_names)}
    return np.array([by_name.get(image_key(p), -1) for p in img_paths], dtype=np.int64)


def _array(value):
    return value.numpy() if hasattr(value, "numpy") else value
