"""Model inference on test views, in bounded chunks, and the clip averaging of mmaction2's heads.

mmaction2's ``Recognizer.predict`` runs all views of a sample as one batch through the backbone and head and then
``BaseHead.average_clip`` averages the per-view class scores (``'prob'``: softmax then mean over views;
``'score'``: mean of the raw scores). Here views are fed to the model in chunks of ``views_per_batch`` (views of
consecutive samples and clip counts share a chunk), the raw per-view scores are kept (so that the score cache and
another ``--aggregate`` need no inference) and averaged afterwards by :func:`aggregate_views`, which is
``average_clip`` for one sample.
"""
from __future__ import annotations

import time

STREAM_NAMES: dict = {}  # head component names are kept as they are ("rgb", "pose"), as ntu_rows expects


SUPPORTED_RECOGNIZERS = ("Recognizer3D", "MMRecognizer3D", "RecognizerGCN")


def check_model(model) -> None:
    """Views are the second input dimension (``[N, V, …]``) only for 3D, multi-modal 3D and GCN recognizers;
    2D recognizers fold segments into the batch, so their views cannot be chunked or cached per view here."""
    from ckpttool.errors import CkptError

    names = {c.__name__ for c in type(model).__mro__}
    if not names & set(SUPPORTED_RECOGNIZERS) or not hasattr(model, "cls_head"):
        raise CkptError(f"ckpt eval runs {', '.join(SUPPORTED_RECOGNIZERS)} models; this config builds "
                        f"{type(model).__name__}")


def head_streams(model, single: str) -> list[str]:
    """Names of the score streams of ``model``'s head: ``['rgb', 'pose']`` for RGBPoseHead, else ``[single]``."""
    comps = getattr(model.cls_head, "loss_components", None)
    if comps:
        return [STREAM_NAMES.get(c, c) for c in comps]
    return [single]


def head_aggregate(model) -> str | None:
    """The head's own ``average_clips`` (``'prob'``, ``'score'`` or None)."""
    return getattr(model.cls_head, "average_clips", None)


def aggregate_views(views, mode: str):
    """Average the raw class scores of one sample's views ``[V, C]`` into ``[C]`` as ``BaseHead.average_clip``
    (``prob``, ``score``); ``max`` takes the element-wise maximum."""
    import torch
    import torch.nn.functional as F

    views = torch.as_tensor(views)
    if mode == "prob":
        return F.softmax(views, dim=-1).mean(dim=0)
    if mode == "score":
        return views.mean(dim=0)
    if mode == "max":  # not an mmaction2 head option; as ``ckpt eval --preds --aggregate max``
        return views.max(dim=0).values
    raise ValueError(f"unknown aggregate {mode!r} (prob, score or max)")


def _num_views(inputs) -> int:
    return next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0]


def _slice(inputs, a: int, b: int):
    return {m: t[a:b] for m, t in inputs.items()} if isinstance(inputs, dict) else inputs[a:b]


def _signature(inputs):
    if isinstance(inputs, dict):
        return tuple((m, tuple(t.shape[1:]), t.dtype) for m, t in sorted(inputs.items()))
    return (tuple(inputs.shape[1:]), inputs.dtype)


def _cat(pieces):
    import torch

    if isinstance(pieces[0], dict):
        return {m: torch.cat([p[m] for p in pieces]) for m in pieces[0]}
    return torch.cat(pieces)


class ViewRunner:
    """Feeds views to the model in chunks and hands back each key's raw per-view scores.

    ``add(key, inputs)`` takes a packed sample's ``inputs`` (``[V, …]`` tensor, or a dict of them for multi-modal
    models); finished keys are returned by ``add``/``flush`` as ``{key: {stream: ndarray [V, C]}}``. With
    ``views_per_batch=None`` each key runs as one batch of all its views (what mmaction2 does with batch size 1).
    """

    def __init__(self, model, streams: list[str], views_per_batch: int | None = None):
        if views_per_batch is not None and int(views_per_batch) < 1:
            raise ValueError("views_per_batch must be a positive integer")
        self.model = model
        self.streams = streams
        self.views_per_batch = int(views_per_batch) if views_per_batch else None
        self._pending = []        # (key, start, inputs piece)
        self._pending_views = 0
        self._signature = None
        self._parts: dict = {}    # key -> list of (start, {stream: tensor})
        self._expected: dict = {}
        self.seconds = 0.0
        self.batches = 0
        self.max_batch_views = 0

    def add(self, key, inputs) -> dict:
        done: dict = {}
        n = _num_views(inputs)
        self._expected[key] = n
        self._parts[key] = []
        if self.views_per_batch is None:
            self._pending.append((key, 0, inputs))
            self._pending_views = n
            done.update(self._run())
            return done
        sig = _signature(inputs)
        if self._signature is not None and sig != self._signature:
            done.update(self._run())   # shapes differ from what is pending: cannot share a batch
        self._signature = sig
        start = 0
        while start < n:
            take = min(n - start, self.views_per_batch - self._pending_views)
            self._pending.append((key, start, _slice(inputs, start, start + take)))
            self._pending_views += take
            start += take
            if self._pending_views >= self.views_per_batch:
                done.update(self._run())
        return done

    def flush(self) -> dict:
        return self._run() if self._pending else {}

    def __call__(self, inputs):
        """Raw head scores ``{stream: tensor [V, C]}`` of a batch of views (one pseudo-sample)."""
        import torch

        model = self.model
        if isinstance(inputs, dict):
            batch = {"inputs": {m: [t] for m, t in inputs.items()}, "data_samples": None}
        else:
            batch = {"inputs": [inputs], "data_samples": None}
        with torch.no_grad():
            data = model.data_preprocessor(batch, False)
            feats, kwargs = model.extract_feat(data["inputs"], test_mode=True)
            scores = model.cls_head(feats, **kwargs)
        if isinstance(scores, dict):
            comps = list(getattr(model.cls_head, "loss_components", scores.keys()))
            return {STREAM_NAMES.get(c, c): scores[c].float().cpu() for c in comps}
        return {self.streams[0]: scores.reshape(scores.shape[0], -1).float().cpu()}

    def _run(self) -> dict:
        pieces = self._pending
        self._pending, self._pending_views, self._signature = [], 0, None
        inputs = _cat([p for _, _, p in pieces]) if len(pieces) > 1 else pieces[0][2]
        t0 = time.perf_counter()
        scores = self(inputs)
        self.seconds += time.perf_counter() - t0
        self.batches += 1
        total = _num_views(inputs)
        self.max_batch_views = max(self.max_batch_views, total)
        offset = 0
        done = {}
        for key, start, piece in pieces:
            n = _num_views(piece)
            self._parts[key].append((start, {s: t[offset:offset + n] for s, t in scores.items()}))
            offset += n
            got = sum(next(iter(p.values())).shape[0] for _, p in self._parts[key])
            if got == self._expected[key]:
                import torch

                parts = sorted(self._parts.pop(key), key=lambda x: x[0])
                done[key] = {s: torch.cat([p[s] for _, p in parts]).numpy() for s in scores}
                del self._expected[key]
        return done
