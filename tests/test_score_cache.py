"""The engine's per-view score cache: dense and ragged outputs round-trip exactly; foreign files are misses."""
from __future__ import annotations

import numpy as np

from ckpttool.engine.pipeline import stack
from ckpttool.engine.score_cache import ScoreCache


def _cache(tmp_path, prefix="view-"):
    return ScoreCache(tmp_path, prefix, {"model": {"type": "X"}}, "ab" * 32, None)


def test_ragged_detector_outputs_and_image_path_targets_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n_boxes = [3, 0, 5]   # an image without detections is an empty view
    paths = stack([f"set06/V000/visible/I{i:05d}.jpg" for i in range(3)])
    outputs = {"bboxes": stack([[rng.random((m, 4), dtype=np.float32)] for m in n_boxes]),
               "labels": stack([[np.zeros(m, np.int64)] for m in n_boxes]),
               "meta": stack([np.array([[512, 640, 256, 320, 0.5, 0.5, 1, 1.0]]) for _ in n_boxes])}
    assert outputs["bboxes"].dtype == object and outputs["meta"].shape == (3, 1, 8)
    cache = _cache(tmp_path)
    assert cache.save("320x256+flip:horizontal", paths, outputs) is not None
    labels, got = cache.load("320x256+flip:horizontal", 2)   # a --limit smaller than what was stored
    assert list(labels) == list(paths[:2])
    for i in range(2):
        [a], [b] = got["bboxes"][i], outputs["bboxes"][i]
        assert a.dtype == np.float32 and a.shape == b.shape and (a == b).all()
        assert (got["labels"][i][0] == outputs["labels"][i][0]).all()
    np.testing.assert_array_equal(got["meta"], outputs["meta"][:2])
    assert cache.load("320x256+flip:horizontal", 4) is None   # more samples than it holds: a miss


def test_samples_with_different_view_counts_are_cached_too(tmp_path):
    views = stack([np.ones((2, 5), np.float32), np.full((3, 5), 2, np.float32)])
    assert views.dtype == object
    cache = _cache(tmp_path, "clips")
    cache.save_all({3: (stack([4, 7]), {"pose": views})})
    labels, got = cache.load(3, 2)
    assert labels.dtype == np.int64 and list(labels) == [4, 7]
    assert [np.asarray(v).shape for v in got["pose"]] == [(2, 5), (3, 5)]
    assert (np.asarray(got["pose"][1]) == 2).all()


def test_outputs_that_are_not_numbers_are_not_cached(tmp_path):
    cache = _cache(tmp_path)
    assert cache.save("k", stack([1, 2]), {"x": stack([["a"], [{"b": 1}]])}) is None
    assert not list(tmp_path.iterdir())


def test_a_foreign_or_damaged_file_is_a_miss(tmp_path):
    cache = _cache(tmp_path)
    cache.save("k", stack([1]), {"x": np.zeros((1, 1, 2))})
    path = cache.path("k")
    path.write_bytes(path.read_bytes()[:40])
    assert cache.load("k", 1) is None
