"""``ckpt eval CONFIG CHECKPOINT --clips 1,3,5,10``: multi-clip test-time augmentation with a real mmaction2 model.

One pass over the test split evaluates every clip count ``k``: per sample the annotation is read once, the
per-k pipelines (``num_clips=k`` set on the sampling step) share one decode of the union of their frames
(:mod:`ckpttool.eval.shared_decode`), the views go through the model in bounded chunks
(:mod:`ckpttool.eval.runner`) and the raw per-view scores are cached (:mod:`ckpttool.eval.score_cache`).
Averaging the views as the head's ``average_clip`` does gives, for each k, the per-sample scores of
mmaction2's ``Runner.test()`` with ``num_clips=k``. See docs/eval-tta.md.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

from ckpttool.errors import CkptError

AGGREGATES = ("prob", "score", "max")


def parse_clips(clips) -> list[int]:
    """``"1,3,5"`` / ``[1, 3, 5]`` / ``5`` -> sorted unique positive ints."""
    if isinstance(clips, str):
        items = [c for c in clips.replace(" ", "").split(",") if c]
    elif isinstance(clips, int):
        items = [clips]
    else:
        items = list(clips or [])
    try:
        ks = sorted({int(c) for c in items})
    except (TypeError, ValueError):
        raise CkptError(f"--clips expects positive integers like 1,3,5,10, got {clips!r}") from None
    if not ks or ks[0] < 1:
        raise CkptError(f"--clips expects positive integers like 1,3,5,10, got {clips!r}")
    return ks


def _test_dataset_cfg(cfg, split):
    if "test_dataloader" not in cfg or not cfg.test_dataloader or "dataset" not in cfg.test_dataloader:
        raise CkptError("the config has no test_dataloader.dataset")
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    if split is not None:
        node = dataset_cfg
        while "pipeline" not in node and "dataset" in node:
            node = node["dataset"]
        node["split"] = split
    return dataset_cfg


def _set_pipeline(dataset_cfg, pipeline):
    node = dataset_cfg
    while "pipeline" not in node and "dataset" in node:
        node = node["dataset"]
    node["pipeline"] = pipeline


def _fingerprint(cfg, dataset_cfg) -> dict:
    """What the cached scores depend on besides the checkpoint and k: the model and the test dataset config."""
    from mmengine.config import ConfigDict

    def plain(x):
        return x.to_dict() if isinstance(x, ConfigDict) else x

    return {"model": plain(cfg.model), "dataset": plain(dataset_cfg), "scope": cfg.get("default_scope")}


class _Dist:
    """torch.distributed set-up for ``--launcher pytorch`` (gloo on CPU, nccl on CUDA)."""

    def __init__(self, launcher: str, device: str):
        self.created = False
        if launcher not in ("none", "pytorch"):
            raise CkptError(f"--launcher must be none or pytorch, got {launcher!r}")
        if launcher == "pytorch":
            import os

            import torch.distributed as dist

            if "RANK" not in os.environ:
                raise CkptError("--launcher pytorch needs torchrun (RANK/WORLD_SIZE are not set)")
            if not dist.is_initialized():
                if device.startswith("cuda"):
                    import torch

                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
                dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
                self.created = True
        from mmengine.dist import get_dist_info

        self.rank, self.world = get_dist_info()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        from mmengine.dist import all_gather_object

        return all_gather_object(obj)

    def barrier(self):
        if self.world > 1:
            from mmengine.dist import barrier

            barrier()

    def close(self):
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def evaluate_model(config, checkpoint, clips, aggregate: str | None = "prob", cfg_options=None, split=None,
                   views_per_batch=None, cache=None, device: str | None = None, launcher: str = "none", limit=None,
                   dump=None, progress: bool | None = None) -> dict:
    """Evaluate ``checkpoint`` with ``config``'s test split for every clip count in ``clips``.

    Returns ``{"task": "ntu60", "config", "checkpoint", "clips": [{"k", "rows", "cached", "num_views"}], …}``
    where ``rows`` are :func:`ckpttool.metrics.ntu.ntu_rows` of the per-stream scores (and fusions).
    ``aggregate=None`` averages views as the model's head is configured to (``average_clips``); ``clips=None``
    evaluates the config's own ``num_clips``. ``device=None``: cuda when torch sees one, else cpu. ``dump``: a
    folder for ``clips_<k>.pkl`` files, or (one clip count) a ``FILE.pkl`` as ``tools/test.py --dump`` writes.
    ``progress``: a bar of the samples (rate, ETA) on stderr (ckpttool.report.progress).
    """
    from ckpttool.eval import sampling
    from ckpttool.eval.score_cache import ScoreCache, cache_key, file_sha256
    from ckpttool.integrations.openmmlab import load_config, resolve_device

    if aggregate is not None and aggregate not in AGGREGATES:
        raise CkptError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    if limit is not None and int(limit) < 1:
        raise CkptError("--limit must be a positive integer")
    if views_per_batch is not None and int(views_per_batch) < 1:
        raise CkptError("--views-per-batch must be a positive integer")
    if not Path(checkpoint).exists():
        raise CkptError(f"checkpoint not found: {checkpoint}")
    device = resolve_device(device)
    t_start = time.perf_counter()
    cfg = load_config(config, cfg_options)
    dataset_cfg = _test_dataset_cfg(cfg, split)
    base_pipeline = sampling.dataset_pipeline(dataset_cfg)
    steps = sampling.find_sampling_steps(base_pipeline)  # fail early, naming the expected steps
    ks = parse_clips(clips if clips is not None else steps[0][1].get("num_clips", 1))
    if dump is not None and str(dump).endswith(".pkl") and len(ks) > 1:
        raise CkptError(f"--dump {dump}: one file holds one setting; give --dump DIR for --clips "
                        f"{','.join(map(str, ks))} (DIR/clips_<k>.pkl)")
    split_name = split if split is not None else _split_of(dataset_cfg)
    ck_sha = file_sha256(checkpoint)
    fingerprint = _fingerprint(cfg, dataset_cfg)
    keys = {k: cache_key(fingerprint, ck_sha, split_name, k) for k in ks}
    store = ScoreCache(cache) if cache else None

    dist = _Dist(launcher, device)
    try:
        state = _State()
        need = None if limit is None else int(limit)
        cached = {}
        if store is not None and need is not None:
            for k in ks:
                hit = store.load(keys[k], k, need)
                if hit is not None:
                    cached[k] = hit
        todo = [k for k in ks if k not in cached]
        streams = None
        head_avg = (cfg.model.get("cls_head") or {}).get("average_clips", "prob")
        if todo or store is None or need is None:
            from ckpttool.integrations.openmmlab import build_model, import_scope, load_checkpoint

            import_scope(cfg.get("default_scope"))
            dataset = _build_dataset(dataset_cfg)
            n = len(dataset) if need is None else min(need, len(dataset))
            if store is not None:  # now that the number of samples is known, look again
                for k in todo:
                    hit = store.load(keys[k], k, n)
                    if hit is not None:
                        cached[k] = hit
                todo = [k for k in ks if k not in cached]
            if todo:
                model = build_model(cfg, device=device)
                load_checkpoint(model, checkpoint)
                streams, _ = _run(model, dataset, base_pipeline, todo, n, views_per_batch, dist, state, progress)
                if store is not None and dist.rank == 0:
                    for k in todo:
                        labels, views = state.results[k]
                        if all(v.dtype != object for v in views.values()):  # ragged views stay uncached
                            store.save(keys[k], k, labels, views)
                dist.barrier()
        results = dict(state.results)
        for k, (labels, views) in cached.items():
            results[k] = (labels, views)
            streams = streams or list(views)
        out = _report(config, checkpoint, ks, results, cached, aggregate, head_avg, split_name, views_per_batch,
                      dist, state, t_start)
        out["config_num_clips"] = int(steps[0][1].get("num_clips", 1))  # the config's own (marked on --plot)
        out["device"] = device
        if dump is not None and dist.rank == 0:
            out["dump"] = _write_dumps(dump, ks, results, aggregate or head_avg or "prob")
        return out
    finally:
        dist.close()


def _split_of(dataset_cfg):
    node = dataset_cfg
    while "pipeline" not in node and "dataset" in node:
        node = node["dataset"]
    return node.get("split")


def _build_dataset(dataset_cfg):
    from mmengine.registry import DATASETS

    from ckpttool.integrations.openmmlab import quiet_mmengine_logs

    cfg = copy.deepcopy(dataset_cfg)
    _set_pipeline(cfg, [])  # the per-k pipelines are built separately
    try:
        with quiet_mmengine_logs():
            dataset = DATASETS.build(cfg)
            if hasattr(dataset, "full_init"):
                dataset.full_init()
    except CkptError:
        raise
    except Exception as exc:
        raise CkptError(f"cannot build the test dataset: {type(exc).__name__}: {exc}") from exc
    if len(dataset) == 0:
        raise CkptError("the test dataset is empty (check ann_file and --split)")
    return dataset


class _State:
    def __init__(self):
        self.results: dict = {}  # k -> (labels [n], {stream: [n, V, C]})
        self.timing = {"pipeline_s": 0.0, "decode_s": 0.0, "inference_s": 0.0}
        self.decode = {}
        self.samples = 0


def _run(model, dataset, base_pipeline, ks, n, views_per_batch, dist, state, progress=None):
    """Inference for clip counts ``ks`` over samples ``0..n-1`` (this rank's shard); fills ``state.results``."""
    import numpy as np
    from mmengine.dataset import DefaultSampler
    from mmengine.dataset.base_dataset import Compose

    from ckpttool.eval import sampling
    from ckpttool.eval.runner import ViewRunner, check_model, head_aggregate, head_streams
    from ckpttool.eval.shared_decode import PlanStop, SharedDecode
    from ckpttool.report.progress import bar

    check_model(model)
    streams = head_streams(model, sampling.stream_kind(base_pipeline))
    shared = SharedDecode()
    pipelines = {}
    for k in ks:
        pipelines[k] = Compose(sampling.with_num_clips(base_pipeline, k))
        shared.attach(pipelines[k])
    runner = ViewRunner(model, streams, views_per_batch)
    indices = list(DefaultSampler(list(range(n)), shuffle=False, round_up=False))
    per_k = {k: {} for k in ks}
    labels = {}

    def collect(done):
        for (idx, k), scores in done.items():
            per_k[k][idx] = scores

    pipe_s = 0.0
    with bar(len(indices), f"testing num_clips={','.join(map(str, ks))}", " samples",
             progress if dist.rank == 0 else False) as ticks:
        for idx in indices:
            info = dataset.get_data_info(idx)
            labels[idx] = int(np.asarray(info.get("label", -1)).reshape(-1)[0])
            shared.next_sample()
            pending = []
            for k in ks:
                tp = time.perf_counter()
                shared.planning = bool(shared.patched_steps)
                try:
                    packed = pipelines[k](copy.deepcopy(info))
                except PlanStop:
                    pending.append(k)
                    pipe_s += time.perf_counter() - tp
                    continue
                pipe_s += time.perf_counter() - tp
                collect(runner.add((idx, k), packed["inputs"]))
            shared.planning = False
            if pending:
                tp = time.perf_counter()
                shared.prefetch()
                pipe_s += time.perf_counter() - tp
            for k in pending:
                tp = time.perf_counter()
                packed = pipelines[k](copy.deepcopy(info))
                pipe_s += time.perf_counter() - tp
                collect(runner.add((idx, k), packed["inputs"]))
            ticks.update(1)
        collect(runner.flush())
    shared.next_sample()

    # gather every rank's (index -> scores) and order by dataset index
    gathered = dist.gather({"labels": labels, "per_k": per_k})
    all_labels = {}
    merged = {k: {} for k in ks}
    for part in gathered:
        all_labels.update(part["labels"])
        for k in ks:
            merged[k].update(part["per_k"][k])
    order = list(range(n))
    label_arr = np.array([all_labels[i] for i in order], dtype=np.int64)
    for k in ks:
        views = {}
        for s in streams:
            rows = [merged[k][i][s] for i in order]
            try:
                views[s] = np.stack(rows)
            except ValueError:  # different view counts per sample: keep a ragged object array
                arr = np.empty(len(rows), dtype=object)
                arr[:] = rows
                views[s] = arr
        state.results[k] = (label_arr, views)
    state.samples = len(indices)
    state.timing["decode_s"] += shared.decode_seconds
    state.timing["pipeline_s"] += pipe_s - shared.decode_seconds
    state.timing["inference_s"] += runner.seconds
    state.decode = {"shared": bool(shared.patched_steps), "videos_opened": shared.videos_opened,
                    "frames_decoded": shared.frames_decoded, "frames_requested": shared.frames_requested}
    state.batches = {"batches": runner.batches, "max_views": runner.max_batch_views}
    return streams, head_aggregate(model)


def _aggregate(views, mode):
    import numpy as np

    from ckpttool.eval.runner import aggregate_views

    return np.stack([aggregate_views(v, mode).numpy() for v in views]).astype(np.float32)


def _scores(views: dict, mode: str) -> dict:
    return {s: _aggregate(v, mode) for s, v in views.items()}


def _report(config, checkpoint, ks, results, cached, aggregate, head_avg, split_name, views_per_batch, dist,
            state, t_start) -> dict:
    from ckpttool.metrics.ntu import ntu_rows

    mode = aggregate or head_avg or "prob"
    entries = []
    num = None
    for k in ks:
        labels, views = results[k]
        num = len(labels)
        rows = ntu_rows(_scores(views, mode), labels, fusions=True)
        first = next(iter(views.values()))
        entries.append({"k": k, "rows": rows, "cached": k in cached,
                        "num_views": int(first.shape[1]) if first.dtype != object else None})
    timing = dict(state.timing)
    timing["total_s"] = time.perf_counter() - t_start
    first_scores = next(iter(results[ks[0]][1].values()))
    out = {"task": "ntu60", "config": str(config), "checkpoint": str(checkpoint), "clips": entries,
           "aggregate": mode, "num_classes": int(first_scores[0].shape[-1]), "split": split_name, "num_samples": num, "views_per_batch": views_per_batch,
           "world_size": dist.world, "timing": timing}
    if state.decode:
        out["decode"] = state.decode
    return out


def _write_dumps(directory, ks, results, mode) -> list[str]:
    """``DIR/clips_{k}.pkl`` as mmaction2's ``tools/test.py --dump`` writes (a list of ActionDataSample dicts);
    ``directory`` ending in ``.pkl`` (one k): that file itself, as ``tools/test.py --dump FILE.pkl``."""
    import pickle

    import torch
    from mmaction.structures import ActionDataSample

    from ckpttool.eval.runner import aggregate_views

    single = str(directory).endswith(".pkl")
    directory = Path(directory)
    if single and not directory.parent.is_dir():
        raise CkptError(f"--dump {directory}: directory {directory.parent} does not exist")
    if not single:
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for k in ks:
        labels, views = results[k]
        streams = list(views)
        samples = []
        for i, label in enumerate(labels):
            ds = ActionDataSample().set_gt_label(int(label))
            if len(streams) == 1:
                score = aggregate_views(views[streams[0]][i], mode)
                ds.set_pred_score(score)
                ds.set_pred_label(score.argmax(dim=-1, keepdim=True))
            else:  # RGBPoseHead: a dict of scores by loss component ('rgb', 'pose')
                ds.set_pred_score({s: aggregate_views(views[s][i], mode) for s in streams})
            samples.append(_to_cpu(ds.to_dict(), torch))
        path = directory if single else directory / f"clips_{k}.pkl"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(samples, fh)
        tmp.replace(path)
        written.append(str(path))
    return written


def _to_cpu(obj, torch):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v, torch) for k, v in obj.items()}
    return obj
