"""NTU60 recognition metrics with mmaction2's exact semantics, and ensembles as its report_accuracy.py.

Reusable entry point (also used by the recogniser adapter, ``ckpttool.integrations.mmaction_recognizer``)::

    ntu_rows(scores: dict[str, np.ndarray], labels: np.ndarray, fusions: bool = True) -> list[dict]

``scores`` maps a stream name to per-sample scores (N, C) (already aggregated over views); ``labels`` is (N,) int.
Returns one row per stream, in the dict's order: ``{"name", "top1", "top5", "mean_class_accuracy"}`` in percent.
With ``fusions=True`` and exactly the streams ``rgb`` and ``pose``, three rows ``RGBPose_1:1``, ``RGBPose_2:1``,
``RGBPose_1:2`` follow (weighted sums, as mmaction2's AccMetric reports them).

- top-k: ``np.argsort(scores)[:, -k:]`` contains the label (mmaction2's ``top_k_accuracy``, ties included).
- mean class accuracy: mmaction2's ``mean_class_accuracy``: argmax predictions, confusion matrix over the union of
  predicted and true labels, mean over those classes of hits / occurrences as a label (0 for a class that is only
  ever predicted).
- per-view scores (N, V, C) are aggregated like mmaction2's ``average_clip``: ``prob`` = softmax over classes then
  mean over the first k views, ``score`` = mean, ``max`` = element-wise max of the raw scores.
- ensembles: optional softmax per file, then ``get_weighted_score`` (sum of coefficient x score).
"""
from __future__ import annotations

import copy
import os

import numpy as np

from ckpttool.errors import CkptError
from ckpttool.metrics.constants import AGGREGATES
from ckpttool.options import parse_clips

FUSIONS = {"RGBPose_1:1": (1, 1), "RGBPose_2:1": (2, 1), "RGBPose_1:2": (1, 2)}


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """scipy.special.softmax's arithmetic (same dtype, same reductions)."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def weighted_score(score_list, coeffs) -> np.ndarray:
    """mmaction2's get_weighted_score: sum_i coeff_i * score_i, computed the same way (float64 result)."""
    return np.dot(np.array(score_list).T, np.array(coeffs)).T


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, topk=(1, 5)) -> list:
    order = np.argsort(scores, axis=1)
    labels = np.asarray(labels)[:, None]
    return [float(np.logical_or.reduce(order[:, -k:][:, ::-1] == labels, axis=1).sum() / len(labels))
            for k in topk]


def confusion(pred: np.ndarray, labels: np.ndarray):
    """(class ids, confusion counts [true, pred]) over the union of predicted and true labels."""
    classes = np.unique(np.concatenate((pred, labels)))
    index = np.searchsorted(classes, labels) * len(classes) + np.searchsorted(classes, pred)
    return classes, np.bincount(index, minlength=len(classes) ** 2).reshape(len(classes), len(classes))


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    _, cm = confusion(np.argmax(scores, axis=1), np.asarray(labels))
    cm = cm.astype(float)
    cnt, hit = cm.sum(axis=1), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.where(cnt > 0, hit / cnt, 0.0)))


def row(name: str, scores: np.ndarray, labels: np.ndarray) -> dict:
    top1, top5 = top_k_accuracy(scores, labels, (1, min(5, scores.shape[1])))
    return {"name": name, "top1": 100 * top1, "top5": 100 * top5,
            "mean_class_accuracy": 100 * mean_class_accuracy(scores, labels)}


def ntu_rows(scores: dict, labels: np.ndarray, fusions: bool = True) -> list:
    labels = np.asarray(labels)
    for name, s in scores.items():
        if s.ndim != 2 or len(s) != len(labels):
            raise CkptError(f"scores {name!r} have shape {s.shape}; expected ({len(labels)}, classes)")
    rows = [row(name, s, labels) for name, s in scores.items()]
    if fusions and set(scores) == {"rgb", "pose"}:
        for name, coeff in FUSIONS.items():
            rows.append(row(name, weighted_score([scores["rgb"], scores["pose"]], coeff), labels))
    return rows


def aggregate_views(views: np.ndarray, mode: str = "prob", k: int | None = None) -> np.ndarray:
    """(N, V, C) -> (N, C) over the first k views; (N, C) passes through."""
    return reduce_views(prepare_views(views, mode), mode, k)


def prepare_views(views: np.ndarray, mode: str) -> np.ndarray:
    """The per-view part of the aggregation (softmax for ``prob``), done once for every k."""
    if mode not in AGGREGATES:
        raise CkptError(f"unknown aggregate {mode!r}; choose from {', '.join(AGGREGATES)}")
    return softmax(views, axis=2) if views.ndim == 3 and mode == "prob" else views


VIEW_ORDERS = ("flip-major", "clip-major")


def clip_views(num_views: int, k: int, views_per_clip: int = 1, order: str = "flip-major") -> list[int]:
    """The view indices of the first k clips. mmaction2's flip TTA (`GeneratePoseTarget(double=True)`, `Flip` in
    the test pipeline) appends the flipped copies after all clips: views = [c0..cK-1, flip(c0)..flip(cK-1)]
    (`flip-major`); `clip-major` is [c0, flip(c0), c1, flip(c1), …]."""
    clips = num_views // views_per_clip
    if order == "flip-major":
        return [f * clips + c for f in range(views_per_clip) for c in range(k)]
    return [c * views_per_clip + f for c in range(k) for f in range(views_per_clip)]


def reduce_views(prepared: np.ndarray, mode: str, k: int | None = None, views_per_clip: int = 1,
                 order: str = "flip-major") -> np.ndarray:
    """(N, V, C) -> (N, C) over the views of the first k clips (all when k is None)."""
    if prepared.ndim == 2:
        return prepared
    if k and views_per_clip > 1:
        v = prepared[:, clip_views(prepared.shape[1], k, views_per_clip, order)]
    else:
        v = prepared[:, :k] if k else prepared
    return v.max(axis=1) if mode == "max" else v.mean(axis=1)


def num_views(streams: dict) -> int:
    return max((s.shape[1] for s in streams.values() if s.ndim == 3), default=1)


def evaluate_scores(files: dict, labels: np.ndarray, clips=None, aggregate: str = "prob",
                    coefficients=None, apply_softmax: bool = False, per_class: bool = False,
                    class_names=None, views_per_clip: int = 1, view_order: str = "flip-major") -> dict:
    """Metrics for one or more prediction sets.

    ``files``: name -> {stream: (N, C) or (N, V, C)} (a bare array is the stream 'score'). Rows: each file's
    streams (and RGBPose fusions); with several files, their ensemble (per common stream). ``clips``: list of k,
    the table for the first k views each. Returns the ``--format json`` dict of ``ckpt eval --task ntu60``."""
    files = {n: (s if isinstance(s, dict) else {"score": s}) for n, s in files.items()}
    labels = np.asarray(labels, dtype=np.int64)
    if coefficients is not None and len(coefficients) != len(files):
        raise CkptError(f"{len(coefficients)} coefficients for {len(files)} prediction files")
    coefficients = list(coefficients) if coefficients is not None else [1.0] * len(files)
    views = max(num_views(s) for s in files.values())
    if views_per_clip < 1 or views % views_per_clip:
        raise CkptError(f"--views-per-clip {views_per_clip}: the predictions have {views} view(s) per sample, "
                        f"not a multiple of it")
    if view_order not in VIEW_ORDERS:
        raise CkptError(f"unknown view order {view_order!r}; choose from {', '.join(VIEW_ORDERS)}")
    total = views // views_per_clip   # clips per sample
    ks = parse_clips(clips) if clips else []
    bad = [k for k in ks if k < 1 or k > total]
    if bad:
        raise CkptError(f"--clips {bad[0]}: the predictions have {total} clip(s) per sample "
                        f"({views} views, {views_per_clip} per clip)")

    prepared = {n: {s: prepare_views(v, aggregate) for s, v in streams.items()} for n, streams in files.items()}

    memo = {}

    def table(k):
        k = None if k is None or k >= total else k
        if k not in memo:
            memo[k] = _rows_at(prepared, labels, k, aggregate, coefficients, apply_softmax, views_per_clip,
                               view_order)
        return copy.deepcopy(memo[k][0]), memo[k][1]

    rows, primary = table(None)
    out = {"task": "ntu60", "num_samples": int(len(labels)), "num_classes": _num_classes(files),
           "views": views, "aggregate": aggregate if views > 1 else None, "files": list(files),
           "rows": rows}
    if ks and views > 1:
        out["view_layout"] = {"views_per_clip": views_per_clip, "order": view_order, "clips": total}
        if views_per_clip == 1:
            out.setdefault("notes", []).append(
                "--clips k takes the first k views as k clips: the dump does not record its view layout; with "
                "flip or crop TTA (several views per clip) give --views-per-clip N")
    if len(files) > 1:
        out["coefficients"] = coefficients
        out["apply_softmax"] = apply_softmax
    if ks:
        out["clips"] = [{"k": k, "rows": table(k)[0]} for k in ks]
    if per_class:
        out["per_class"] = per_class_table(primary[1], labels, primary[0], class_names)
    return out


def _num_classes(files):
    return int(next(iter(next(iter(files.values())).values())).shape[-1])


def _rows_at(files, labels, k, mode, coefficients, apply_softmax, views_per_clip=1, view_order="flip-major"):
    """Rows for the first k clips (all when k is None) and the (name, scores) of the headline row."""
    rows, agg = [], {}
    for name, streams in files.items():
        agg[name] = {s: reduce_views(v, mode, k, views_per_clip, view_order) for s, v in streams.items()}
        for r in ntu_rows(agg[name], labels):
            if list(streams) == ["score"]:
                r["name"] = name
            elif len(files) > 1:
                r["name"] = f"{name}:{r['name']}"
            rows.append(r)
    first = next(iter(agg.values()))
    primary = (rows[0]["name"], next(iter(first.values())))
    if set(first) == {"rgb", "pose"}:
        primary = (rows[2]["name"], weighted_score([first["rgb"], first["pose"]], FUSIONS["RGBPose_1:1"]))
    if len(files) > 1:
        common = [s for s in first if all(s in a for a in agg.values())]
        if not common:
            raise CkptError("the prediction files share no score stream to ensemble")
        ens = {}
        for s in common:
            scores = [a[s] for a in agg.values()]
            if apply_softmax:
                scores = [softmax(x, axis=1) for x in scores]
            ens[s] = weighted_score(scores, coefficients)
        label = "ensemble(" + " + ".join(f"{c:g}*{n}" for c, n in zip(coefficients, files)) + ")"
        ens_rows = ntu_rows(ens, labels)
        for r in ens_rows:
            r["name"] = label if r["name"] == "score" else f"{label}:{r['name']}"
        rows += ens_rows
        primary = (ens_rows[0]["name"], next(iter(ens.values())))
    return rows, primary


def class_names_for(num_classes: int):
    """The NTU60 names shipped with the tool when there are 60 classes, else None."""
    if num_classes != 60:
        return None
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "ntu60_classes.txt")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def per_class_table(scores: np.ndarray, labels: np.ndarray, row_name: str, class_names=None, top: int = 10):
    """Per-class accuracy (over each class's samples) and the most confused (true, predicted) pairs."""
    n_cls = scores.shape[1]
    names = class_names if class_names is not None else class_names_for(n_cls)
    pred = np.argmax(scores, axis=1)
    cm = np.bincount(labels * n_cls + pred, minlength=n_cls * n_cls).reshape(n_cls, n_cls)
    count = cm.sum(axis=1)
    name = (lambda c: names[c] if names and c < len(names) else str(c))
    classes = [{"label": int(c), "name": name(c), "count": int(count[c]),
                "accuracy": 100.0 * cm[c, c] / count[c]} for c in np.flatnonzero(count)]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [{"true": int(t), "true_name": name(t), "pred": int(p), "pred_name": name(p), "count": int(off[t, p]),
              "fraction": 100.0 * off[t, p] / count[t]}
             for t, p in zip(*np.unravel_index(flat, off.shape)) if off[t, p] > 0]
    return {"row": row_name, "classes": classes, "confused": pairs, "confusion": cm}


def evaluate_ntu(preds, coefficients=None, apply_softmax: bool = False, ann: str | None = None,
                 split: str | None = None, aggregate: str = "prob", clips=None, per_class: bool = False,
                 views_per_clip: int = 1, view_order: str = "flip-major") -> dict:
    """`ckpt eval --task ntu60`: read the prediction files (and labels), then `evaluate_scores`."""
    from ckpttool.metrics.predictions import named_paths, read_predictions, read_split_labels

    if not preds:
        raise CkptError("no prediction files given (--preds)")
    if aggregate not in AGGREGATES:
        raise CkptError(f"unknown aggregate {aggregate!r}; choose from {', '.join(AGGREGATES)}")
    names, preds = named_paths(preds)   # NAME=PATH names a row (the gate matches rows by these names)
    read = [read_predictions(p) for p in preds]
    n = read[0].num_samples
    for p in read[1:]:
        if p.num_samples != n:
            raise CkptError(f"{os.path.basename(p.path)} has {p.num_samples} samples, "
                            f"{os.path.basename(read[0].path)} has {n}")
    if ann:
        labels = read_split_labels(ann, split)
        if len(labels) != n:
            where = f"split {split!r} of " if split else ""
            raise CkptError(f"{where}{os.path.basename(ann)} has {len(labels)} samples, the predictions have {n}")
    else:
        labels = read[0].labels
        if labels is None:
            raise CkptError(f"{os.path.basename(read[0].path)} has no labels; pass --ann ANN.pkl --split NAME")
        for p in read[1:]:
            if p.labels is not None and not np.array_equal(p.labels, labels):
                i = int(np.argmax(p.labels != labels))
                raise CkptError(f"{os.path.basename(p.path)}: sample {i} has label {p.labels[i]}, "
                                f"{os.path.basename(read[0].path)} has {labels[i]} (not the same samples/order?)")
    classes = {s.shape[-1] for p in read for s in p.streams.values()}
    if len(classes) != 1:
        raise CkptError(f"the prediction files disagree on the number of classes: {sorted(classes)}")
    c = classes.pop()
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= c:
        raise CkptError(f"labels must lie in 0..{c - 1}; found {labels.min()}..{labels.max()}")
    out = evaluate_scores({name: p.streams for name, p in zip(names, read)}, labels, clips=clips,
                          aggregate=aggregate, coefficients=coefficients, apply_softmax=apply_softmax,
                          per_class=per_class, views_per_clip=views_per_clip, view_order=view_order)
    out["files"] = list(preds)
    return out

