"""Decode each sample's frames once for every clip count.

mmaction pipelines sample frame indices *before* decoding (``UniformSampleFrames`` → ``MMDecode``,
``DecordInit`` → ``SampleFrames`` → ``DecordDecode``), so decoding cannot simply be hoisted out of the per-k
pipelines. Instead every decord-based step of every per-k pipeline gets its video reader from a
:class:`SharedDecode`, which works in two passes per sample:

1. *plan*: each per-k pipeline runs until its first frame request, which the shared reader records and answers
   by raising :class:`PlanStop` (pipelines that never touch a reader, e.g. skeleton-only ones, simply finish);
2. *serve*: the union of the requested indices is decoded with one ``get_batch`` per video, then the stopped
   pipelines run again and are served copies of the cached frames.

The video file itself is read and opened once per sample. Frames are returned as fresh arrays, so in-place
transforms (``Flip`` uses ``imflip_``) cannot leak from one k into another.
"""
from __future__ import annotations

import time

import numpy as np


class PlanStop(Exception):
    """Raised by a shared reader in planning mode at a pipeline's first frame request."""


class _Batch:
    def __init__(self, array):
        self._array = array

    def asnumpy(self):
        return self._array


class SharedReader:
    """Stands in for ``decord.VideoReader`` within one sample: ``len``, ``get_avg_fps``, ``get_batch``, ``[i]``,
    ``seek``/``next``."""

    def __init__(self, owner: "SharedDecode", filename: str, open_real):
        self._owner = owner
        self._filename = filename
        self._open_real = open_real
        self._real = None
        self.planned: set[int] = set()
        self.frames: dict[int, np.ndarray] = {}

    @property
    def real(self):
        if self._real is None:
            t0 = time.perf_counter()
            self._real = self._open_real(self._filename)
            self._owner.decode_seconds += time.perf_counter() - t0
            self._owner.videos_opened += 1
        return self._real

    def __len__(self):
        return len(self.real)

    def get_avg_fps(self):
        return self.real.get_avg_fps()

    def _request(self, indices) -> list[int]:
        inds = [int(i) for i in np.asarray(indices).reshape(-1)]
        if self._owner.planning:
            self.planned.update(inds)
            raise PlanStop(self._filename)
        self._owner.frames_requested += len(inds)
        missing = sorted(set(inds) - self.frames.keys())
        if missing:
            self.decode(missing)
        return inds

    def decode(self, indices) -> None:
        t0 = time.perf_counter()
        batch = self.real.get_batch(list(indices)).asnumpy()
        self._owner.decode_seconds += time.perf_counter() - t0
        self._owner.frames_decoded += len(indices)
        for i, frame in zip(indices, batch):
            self.frames[i] = frame

    def get_batch(self, indices):
        inds = self._request(indices)
        return _Batch(np.stack([self.frames[i] for i in inds]))

    def __getitem__(self, index):
        (i,) = self._request([index])
        return _Batch(self.frames[i].copy())

    # 'efficient' decoding mode seeks to key frames; not shareable, so it goes to the real reader
    def seek(self, index):
        if self._owner.planning:
            raise PlanStop(self._filename)
        return self.real.seek(index)

    def next(self):
        t0 = time.perf_counter()
        frame = self.real.next()
        self._owner.decode_seconds += time.perf_counter() - t0
        self._owner.frames_decoded += 1
        return frame


class SharedDecode:
    """Per-sample frame sharing across the per-k pipelines (see the module docstring)."""

    def __init__(self):
        self.planning = False
        self._readers: dict[str, SharedReader] = {}
        self.patched_steps = 0
        # statistics over the whole run
        self.decode_seconds = 0.0
        self.frames_decoded = 0
        self.frames_requested = 0
        self.videos_opened = 0

    def attach(self, compose) -> int:
        """Route the decord steps of a built pipeline (``Compose``, wrappers included) through this object."""
        from mmaction.datasets.transforms.loading import DecordInit

        count = 0
        for step in _walk(compose):
            if isinstance(step, DecordInit):  # DecordInit itself and MMDecode
                original = step._get_video_reader
                step._get_video_reader = (lambda filename, _open=original: self.reader(filename, _open))
                count += 1
        self.patched_steps += count
        return count

    def reader(self, filename: str, open_real) -> SharedReader:
        r = self._readers.get(filename)
        if r is None:
            r = self._readers[filename] = SharedReader(self, filename, open_real)
        return r

    def prefetch(self) -> None:
        """Decode, per video, the union of the indices the planned pipelines asked for, in one batch."""
        for r in self._readers.values():
            missing = sorted(r.planned - r.frames.keys())
            if missing:
                r.decode(missing)

    def next_sample(self) -> None:
        self._readers.clear()
        self.planning = False


def _walk(obj, depth: int = 0):
    if depth > 20:
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _walk(item, depth + 1)
        return
    yield obj
    inner = getattr(obj, "transforms", None)
    if inner is not None and inner is not obj:
        yield from _walk(inner, depth + 1)
