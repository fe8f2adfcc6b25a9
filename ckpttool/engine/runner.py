"""Inference on test views in bounded chunks: views of consecutive samples and view keys share a forward pass.

The adapter's ``forward(model, inputs)`` maps a batch of views ``[V, …]`` (a tensor, a dict of them for
multi-modal models, or a list of V packed samples, e.g. a detector's images) to raw per-view outputs
``{stream: tensor [V, …]}`` (or a list of V items per stream). The raw outputs are kept per view (so that the score
cache and another aggregation need no inference).
"""
from __future__ import annotations

import time


def _num_views(inputs) -> int:
    if isinstance(inputs, list):
        return len(inputs)
    return next(iter(inputs.values())).shape[0] if isinstance(inputs, dict) else inputs.shape[0]


def _slice(inputs, a: int, b: int):
    return {m: t[a:b] for m, t in inputs.items()} if isinstance(inputs, dict) else inputs[a:b]


def _signature(inputs):
    if isinstance(inputs, list):   # packed samples: the adapter's forward collates them
        return ("samples",)
    if isinstance(inputs, dict):
        return tuple((m, tuple(t.shape[1:]), t.dtype) for m, t in sorted(inputs.items()))
    return (tuple(inputs.shape[1:]), inputs.dtype)


def _cat(pieces):
    import torch

    if isinstance(pieces[0], list):
        return [sample for piece in pieces for sample in piece]
    if isinstance(pieces[0], dict):
        return {m: torch.cat([p[m] for p in pieces]) for m in pieces[0]}
    return torch.cat(pieces)


def _join(parts: list):
    """One view key's per-view outputs, from its chunks in order: an ndarray for tensors, else a list."""
    if hasattr(parts[0], "numpy"):
        import torch

        return torch.cat(parts).numpy()
    return [item for part in parts for item in part]


class ViewRunner:
    """Feeds views to ``forward`` in chunks and hands back each key's raw per-view outputs.

    ``add(key, inputs)`` takes a packed sample's ``[V, …]`` inputs; finished keys are returned by ``add``/``flush``
    as ``{key: {stream: ndarray [V, …]}}``. With ``views_per_batch=None`` each key runs as one batch of all its
    views (what mmaction2 does with batch size 1).
    """

    def __init__(self, forward, views_per_batch: int | None = None):
        self.forward = forward
        self.views_per_batch = int(views_per_batch) if views_per_batch else None
        self._pending = []        # (key, start, inputs piece)
        self._pending_views = 0
        self._signature = None
        self._parts: dict = {}    # key -> list of (start, {stream: outputs})
        self._expected: dict = {}
        self.seconds = 0.0
        self.batches = 0
        self.max_batch_views = 0

    def add(self, key, inputs) -> dict:
        n = _num_views(inputs)
        self._expected[key], self._parts[key] = n, []
        if self.views_per_batch is None:
            self._pending, self._pending_views = [(key, 0, inputs)], n
            return self._run()
        done: dict = {}
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

    def __call__(self, inputs) -> dict:
        """Raw outputs ``{stream: [V, …]}`` of a batch of views."""
        import torch

        with torch.no_grad():
            return self.forward(inputs)

    def _run(self) -> dict:
        pieces = self._pending
        self._pending, self._pending_views, self._signature = [], 0, None
        inputs = _cat([p for _, _, p in pieces]) if len(pieces) > 1 else pieces[0][2]
        t0 = time.perf_counter()
        outputs = self(inputs)
        self.seconds += time.perf_counter() - t0
        self.batches += 1
        self.max_batch_views = max(self.max_batch_views, _num_views(inputs))
        offset, done = 0, {}
        for key, start, piece in pieces:
            n = _num_views(piece)
            self._parts[key].append((start, {s: t[offset:offset + n] for s, t in outputs.items()}))
            offset += n
            if sum(len(next(iter(p.values()))) for _, p in self._parts[key]) == self._expected[key]:
                parts = [p for _, p in sorted(self._parts.pop(key), key=lambda x: x[0])]
                done[key] = {s: _join([p[s] for p in parts]) for s in outputs}
                del self._expected[key]
        return done
