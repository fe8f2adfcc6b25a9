"""Reading recognition predictions: mmaction2 dump pickles and the project's per-clip score files.

``read_predictions(path) -> Predictions`` with ``streams`` (name -> float array (N, C) or per-view (N, V, C)) and
``labels`` ((N,) int64 or None).

- mmaction2 1.x ``tools/test.py --dump`` pickle: a list of dicts with ``pred_score`` (a tensor (C,), per-view
  scores (V, C) when the model ran with ``average_clips=None``, or a dict of tensors such as ``{'rgb', 'pose'}`` for
  RGBPoseConv3D) and ``gt_label`` (tensor (1,)). Read with ``ckpttool.io.load_pickle``: no code from the file runs.
  (mmaction2 1.0's ``pred_scores={'item': ...}`` / ``gt_labels={'item': ...}`` are read too.) A single-array
  ``pred_score`` becomes the stream ``score``.
- per-clip score files (``.npz``, loaded with ``allow_pickle=False``): the score cache of
  ``ckpt eval CONFIG CHECKPOINT --cache DIR`` (``clips<k>-<key>.npz``: ``meta`` JSON with ``streams``, ``labels``,
  ``views_<i>`` (N, V, C) per stream), or a plain file with ``labels`` (N,) and ``scores`` (N, C) / (N, V, C) or one
  ``scores_<stream>`` array per stream.

``read_split_labels(ann_path, split)`` gives the labels of an NTU60 annotation pickle's split, in the order
mmaction2's PoseDataset uses (annotations filtered by membership in ``split[name]``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from ckpttool.errors import FormatError


@dataclass
class Predictions:
    path: str
    streams: dict
    labels: np.ndarray | None

    @property
    def num_samples(self) -> int:
        return len(next(iter(self.streams.values())))


def _name(path):
    return os.path.basename(path)


def named_paths(preds) -> tuple[list[str], list[str]]:
    """`--preds NAME=PATH` or `PATH` (named by its file stem; a repeated stem gets `#2`, `#3`): (names, paths).
    Rows carry these names, so that a gate matches rows by name whatever the files are called."""
    names, paths = [], []
    for item in preds:
        item = os.fspath(item)
        name, sep, path = item.partition("=")
        if not sep or not name or os.sep in name or os.path.exists(item):
            name, path = os.path.splitext(os.path.basename(item))[0], item
        names.append(name)
        paths.append(path)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):   # one stem twice: the second row is `joint#2` (name rows with NAME=PATH)
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}#{seen[n]}"
    return names, paths


def read_predictions(path: str) -> Predictions:
    if not os.path.isfile(path):
        raise FormatError(f"{path}: no such file")
    if path.lower().endswith(".npz"):
        return _read_npz(path)
    from ckpttool.io import load_pickle

    data = load_pickle(path)
    if not isinstance(data, list) or not data:
        raise FormatError(f"{_name(path)}: expected a non-empty list of mmaction2 results (dicts with "
                          f"'pred_score' and 'gt_label'), got {type(data).__name__}")
    per_stream: dict = {}
    labels = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise FormatError(f"{_name(path)}: item {i}: expected a dict, got {type(item).__name__}")
        score = _item(item, "pred_score", "pred_scores")
        if score is None:
            raise FormatError(f"{_name(path)}: item {i}: no 'pred_score'")
        score = score if isinstance(score, dict) else {"score": score}
        if i and set(score) != set(per_stream):
            raise FormatError(f"{_name(path)}: item {i}: score streams {sorted(score)} differ from item 0's "
                              f"{sorted(per_stream)}")
        for k, v in score.items():
            per_stream.setdefault(k, []).append(_values(v))
        label = _item(item, "gt_label", "gt_labels")
        labels.append(None if label is None else _values(label))
    streams = {k: _stack(path, k, v) for k, v in per_stream.items()}
    if any(v is None for v in labels):
        labels = None if all(v is None for v in labels) else _missing_label(path, labels)
    else:
        labels = _labels(path, labels)
    return Predictions(path, streams, labels)


def _item(item, *keys):
    for key in keys:
        if key in item:
            value = item[key]
            if isinstance(value, dict) and set(value) == {"item"}:
                value = value["item"]
            return value
    return None


def _values(value):
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _labels(path, labels):
    sizes = np.fromiter((a.size for a in labels), dtype=np.int64, count=len(labels))
    if (sizes != 1).any():
        i = int(np.argmax(sizes != 1))
        raise FormatError(f"{_name(path)}: item {i}: gt_label must be one class index (multi-label dumps are "
                          f"not supported), got shape {labels[i].shape}")
    flat = np.concatenate([a.reshape(1) for a in labels])
    if not np.issubdtype(flat.dtype, np.integer) and not (flat == np.round(flat)).all():
        raise FormatError(f"{_name(path)}: gt_label must be integer class indices, got {flat.dtype}")
    return flat.astype(np.int64)


def _missing_label(path, labels):
    i = next(k for k, v in enumerate(labels) if v is None)
    raise FormatError(f"{_name(path)}: item {i}: no 'gt_label' although other items have one")


def _stack(path, stream, arrays):
    first = arrays[0].shape
    if any(a.shape != first for a in arrays):
        i = next(k for k, a in enumerate(arrays) if a.shape != first)
        raise FormatError(f"{_name(path)}: item {i}: pred_score[{stream!r}] has shape {arrays[i].shape}, "
                          f"item 0 has {first}")
    out = np.stack(arrays)
    if out.ndim not in (2, 3) or out.size == 0 or not np.issubdtype(out.dtype, np.floating):
        raise FormatError(f"{_name(path)}: pred_score[{stream!r}] must be float arrays (C,) or (views, C), "
                          f"got shape {first} {out.dtype}")
    return out


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise FormatError(f"{_name(path)}: not a readable .npz score file: {exc}") from None
    streams = {k[len("scores_"):]: v for k, v in data.items() if k.startswith("scores_")}
    if "scores" in data:
        streams["score"] = data["scores"]
    if not streams and "meta" in data:   # the score cache of `ckpt eval CONFIG CHECKPOINT --cache DIR`
        try:
            names = json.loads(str(data["meta"]))["streams"]
            streams = {str(name): data[f"views_{i}"] for i, name in enumerate(names)}
        except (ValueError, KeyError, TypeError):
            raise FormatError(f"{_name(path)}: 'meta' does not describe the 'views_<i>' arrays") from None
    if not streams:
        raise FormatError(f"{_name(path)}: no 'scores' or 'scores_<stream>' array")
    n = None
    for k, v in streams.items():
        if v.ndim not in (2, 3) or not np.issubdtype(v.dtype, np.floating) or v.size == 0:
            raise FormatError(f"{_name(path)}: scores {k!r} must be float (N, C) or (N, views, C), got {v.shape} "
                              f"{v.dtype}")
        if n is not None and len(v) != n:
            raise FormatError(f"{_name(path)}: scores {k!r} has {len(v)} samples, others {n}")
        n = len(v)
    labels = data.get("labels")
    if labels is not None:
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise FormatError(f"{_name(path)}: 'labels' must be {n} integers, got {labels.shape} {labels.dtype}")
        labels = labels.astype(np.int64)
    return Predictions(path, streams, labels)


def read_split_labels(ann_path: str, split: str | None) -> np.ndarray:
    """Labels of an NTU60 annotation pickle ({'split': {...}, 'annotations': [{frame_dir, label}]})."""
    from ckpttool.io import load_pickle

    if not os.path.isfile(ann_path):
        raise FormatError(f"{ann_path}: no such file")
    data = load_pickle(ann_path)
    annos = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(annos, list) or not annos or not all(isinstance(a, dict) for a in annos):
        raise FormatError(f"{_name(ann_path)}: expected {{'split': {{...}}, 'annotations': [{{frame_dir, label}}]}}")
    if split is not None:
        splits = data.get("split") if isinstance(data, dict) else None
        if not isinstance(splits, dict) or split not in splits:
            have = ", ".join(sorted(map(str, splits))) if isinstance(splits, dict) else "none"
            raise FormatError(f"{_name(ann_path)}: no split {split!r} (splits: {have})")
        key = "filename" if "filename" in annos[0] else "frame_dir"
        members = set(splits[split])
        annos = [a for a in annos if a.get(key) in members]
    labels = []
    for i, a in enumerate(annos):
        lab = a.get("label")
        if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)):
            raise FormatError(f"{_name(ann_path)}: annotation {i}: 'label' must be an int, got {lab!r}")
        labels.append(int(lab))
    return np.asarray(labels, dtype=np.int64)
