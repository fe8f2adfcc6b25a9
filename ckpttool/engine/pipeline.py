"""The model-evaluation pipeline: build → weights → data → views → inference (cached per view) → aggregation per
setting → metrics → dumps. What a model family changes comes from its task adapter (:mod:`.adapter`)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ckpttool.engine.adapter import Build, TaskAdapter
from ckpttool.engine.dist import Dist
from ckpttool.errors import CkptError


@dataclass(frozen=True)
class Options:
    """How to run: the engine's own options, checked before anything is loaded."""

    views_per_batch: int | None = None
    cache: str | None = None
    device: str = "cpu"
    launcher: str = "none"
    limit: int | None = None
    progress: bool | None = None    # the samples bar (ckpttool.report.progress): None = only for a terminal

    def __post_init__(self):
        for name in ("limit", "views_per_batch"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise CkptError(f"--{name.replace('_', '-')} must be a positive integer")


@dataclass
class Outputs:
    """The views stage's result, handed to the adapter's ``report``: per view key ``(targets, {stream: array})``,
    which keys came from the cache, the forward passes run (all ranks), the time split and the data stage's
    statistics."""

    results: dict
    cached: set
    timing: dict
    extra: dict
    passes: int = 0


def evaluate(adapter: TaskAdapter, config, checkpoint, settings=None, *, cfg_options=None, split=None,
             project_root=None, dump=None, options: Options = Options()) -> dict:
    """Evaluate ``checkpoint`` with ``config``'s test split for every setting; the result as plain data."""
    if not Path(checkpoint).exists():
        raise CkptError(f"checkpoint not found: {checkpoint}")
    t_start = time.perf_counter()
    build = build_run(config, cfg_options, split, project_root)
    chosen = adapter.settings(build, settings)
    keys = distinct_views(adapter, chosen)
    from ckpttool.integrations.openmmlab import quiet_mmengine_logs

    with Dist(options.launcher, options.device) as dist, quiet_mmengine_logs(logging.ERROR):
        out = collect_views(adapter, build, checkpoint, keys, options, dist)
        result = {"task": adapter.task, "config": str(config), "checkpoint": str(checkpoint),
                  **adapter.report(build, chosen, out), "split": build.split,
                  "num_samples": len(next(iter(out.results.values()))[0]),
                  "views_per_batch": options.views_per_batch, "world_size": dist.world, "device": options.device,
                  "timing": dict(out.timing, total_s=time.perf_counter() - t_start), **out.extra}
        if dump is not None and dist.rank == 0:
            result["dump"] = adapter.dump(dump, build, chosen, out.results)
    return result


def build_run(config, cfg_options=None, split=None, project_root=None) -> Build:
    """The build stage: the config with ``--cfg-options``, its default scope and custom imports, the test set."""
    from ckpttool.integrations import openmmlab
    from ckpttool.plain import plain

    cfg = openmmlab.load_config(config, cfg_options, project_root=project_root)
    openmmlab.import_scope(cfg.get("default_scope"))
    dataset_cfg = openmmlab.test_dataset_cfg(cfg, split)
    split_name = split if split is not None else openmmlab.inner_dataset(dataset_cfg).get("split")
    fingerprint = {"model": plain(cfg.model, max_depth=1000), "dataset": plain(dataset_cfg, max_depth=1000),
                   "scope": cfg.get("default_scope")}
    return Build(str(config), cfg, dataset_cfg, split_name, fingerprint)


def distinct_views(adapter: TaskAdapter, settings) -> list:
    """The union of the settings' view keys, in first-use order: each runs once per sample."""
    return list(dict.fromkeys(key for s in settings for key in adapter.views(s)))


def collect_views(adapter, build: Build, checkpoint, keys, options: Options, dist: Dist) -> Outputs:
    """Per-view outputs of every key: from the cache where it has them, else from running the model."""
    from ckpttool.engine.score_cache import ScoreCache
    from ckpttool.io.hashing import digest

    store = ScoreCache(options.cache, adapter.cache_prefix, build.fingerprint, digest(checkpoint), build.split) \
        if options.cache else None
    timing = {"pipeline_s": 0.0, "decode_s": 0.0, "inference_s": 0.0}
    cached = store.hits(keys, options.limit) if store is not None and options.limit is not None else {}
    if len(cached) == len(keys):
        return Outputs(cached, set(cached), timing, {})
    dataset = _dataset(build)
    n = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    if store is not None:  # now that the number of samples is known, look again
        cached.update(store.hits([k for k in keys if k not in cached], n))
    todo = [k for k in keys if k not in cached]
    if not todo:
        return Outputs(cached, set(cached), timing, {})
    fresh = run_views(adapter, build, checkpoint, dataset, todo, n, options, dist)
    if store is not None and dist.rank == 0:
        store.save_all(fresh.results)
    dist.barrier()
    return Outputs({**fresh.results, **cached}, set(cached), fresh.timing, fresh.extra, fresh.passes)


def _dataset(build: Build):
    from ckpttool.integrations.openmmlab import build_dataset

    dataset = build_dataset(build.dataset_cfg)
    if len(dataset) == 0:
        raise CkptError("the test dataset is empty (check ann_file and --split)")
    return dataset


def run_views(adapter, build: Build, checkpoint, dataset, keys, n: int, options: Options, dist: Dist) -> Outputs:
    """Weights, then inference of view keys ``keys`` over this rank's shard of samples ``0..n-1``, gathered."""
    from ckpttool.engine.runner import ViewRunner
    from ckpttool.integrations.openmmlab import load_checkpoint

    model = adapter.build_model(build, options.device)
    weights = load_checkpoint(model, checkpoint)
    source = adapter.view_source(build, model, keys)
    streams = adapter.streams(build, model)
    runner = ViewRunner(lambda inputs: adapter.forward(model, inputs, streams), options.views_per_batch)
    label = f"{adapter.progress_label} {','.join(map(str, keys))}"
    if len(label) > 48:   # many long view keys: their number, not their names
        label = f"{adapter.progress_label} ({len(keys)})"
    targets, per_key, pipe_s = _infer(adapter, dataset, source, runner, dist.shard(n), label,
                                      options.progress if dist.rank == 0 else False)
    parts = dist.gather({"targets": targets, "per_key": per_key, "passes": runner.batches})
    timing = {"pipeline_s": pipe_s - source.decode_seconds, "decode_s": source.decode_seconds,
              "inference_s": runner.seconds}
    return Outputs(assemble(parts, keys, n, streams), set(), timing, {**source.stats(), "weights": weights},
                   sum(p["passes"] for p in parts))


def _infer(adapter, dataset, source, runner, indices, label, progress=None):
    """Run every sample of ``indices``: targets by index, ``{key: {index: {stream: outputs}}}``, pipeline seconds.
    ``progress``: a bar of the samples with their rate and ETA (ckpttool.report.progress)."""
    from ckpttool.report.progress import bar

    targets, per_key, clock = {}, {}, _Clock()

    def collect(done):
        for (idx, key), outputs in done.items():
            per_key.setdefault(key, {})[idx] = outputs

    with bar(len(indices), label, f" {adapter.sample_unit}", progress) as ticks:
        for idx in indices:
            info = dataset.get_data_info(idx)
            targets[idx] = adapter.target(info)
            for key, inputs in clock.timed(source.sample(info)):
                collect(runner.add((idx, key), inputs))
            ticks.update(1)
        collect(runner.flush())
    return targets, per_key, clock.seconds


class _Clock:
    """Times the steps of a generator (the pipelines), not what the consumer does between them (inference)."""

    def __init__(self):
        self.seconds = 0.0

    def timed(self, gen):
        while True:
            t0 = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            self.seconds += time.perf_counter() - t0
            yield item


def assemble(parts: list, keys, n: int, streams) -> dict:
    """Merge every rank's ``{"targets", "per_key", "passes"}`` into ``key -> (targets [n], {stream: [n, V, …]})`` in
    dataset order; samples with different view counts give a ragged object array."""
    targets, per_key = {}, {k: {} for k in keys}
    for part in parts:
        targets.update(part["targets"])
        for k in keys:
            per_key[k].update(part["per_key"].get(k, {}))
    order = range(n)
    labels = stack([targets[i] for i in order])   # int labels -> int64; image paths -> str
    return {k: (labels, {s: stack([per_key[k][i][s] for i in order]) for s in streams}) for k in keys}


def stack(rows: list):
    """``np.stack(rows)``, or an object array of the rows when their shapes differ or they are lists (of
    per-view outputs of different sizes, e.g. a detector's boxes)."""
    import numpy as np

    if not any(isinstance(r, list) for r in rows):
        try:
            return np.stack(rows)
        except ValueError:
            pass
    arr = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        arr[i] = row
    return arr
