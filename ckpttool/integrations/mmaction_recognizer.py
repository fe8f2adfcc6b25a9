"""The mmaction2 recogniser task adapter: multi-clip test-time augmentation (``ckpt eval CONFIG CKPT --clips``).

Settings are clip counts ``k``; a setting needs one view key, ``k`` itself: the test pipeline with ``num_clips=k``
on its sampling step (:mod:`.sampling`), whose packed output holds the clips × crops × flips views of a sample.
The per-k pipelines share one decode of the union of their frames (:mod:`.shared_decode`). Averaging the views as
the head's ``average_clip`` does gives, for each k, the per-sample scores of mmaction2's ``Runner.test()`` with
``num_clips=k``. The engine (:mod:`ckpttool.engine.pipeline`, entry point
:func:`ckpttool.engine.tasks.evaluate_recognizer`) does the rest; see docs/eval-tta.md.
"""
from __future__ import annotations

import copy

from ckpttool.errors import CkptError
from ckpttool.metrics.constants import AGGREGATES

SUPPORTED_RECOGNIZERS = ("Recognizer3D", "MMRecognizer3D", "RecognizerGCN")


def check_model(model) -> None:
    """Views are the second input dimension (``[N, V, …]``) only for 3D, multi-modal 3D and GCN recognizers;
    2D recognizers fold segments into the batch, so their views cannot be chunked or cached per view here."""
    names = {c.__name__ for c in type(model).__mro__}
    if not names & set(SUPPORTED_RECOGNIZERS) or not hasattr(model, "cls_head"):
        raise CkptError(f"ckpt eval runs {', '.join(SUPPORTED_RECOGNIZERS)} models; this config builds "
                        f"{type(model).__name__}")


class RecognizerAdapter:
    """The :class:`ckpttool.engine.adapter.TaskAdapter` of mmaction2 recognisers (NTU60 tables)."""

    task = "ntu60"
    cache_prefix = "clips"
    progress_label = "clips"
    sample_unit = "samples"

    def __init__(self, aggregate: str | None = "prob"):
        if aggregate is not None and aggregate not in AGGREGATES:
            raise CkptError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.aggregate = aggregate

    def settings(self, build, requested) -> list[int]:
        from ckpttool.integrations import sampling
        from ckpttool.options import parse_clips

        steps = sampling.find_sampling_steps(sampling.dataset_pipeline(build.dataset_cfg))  # fail early
        return parse_clips(requested if requested is not None else steps[0][1].get("num_clips", 1))

    def views(self, k) -> tuple:
        return (k,)

    def build_model(self, build, device: str):
        from ckpttool.integrations import openmmlab

        model = openmmlab.build_model(build.cfg, device=device)
        check_model(model)
        return model

    def view_source(self, build, model, keys) -> "ClipViews":
        from ckpttool.integrations import sampling

        return ClipViews(sampling.dataset_pipeline(build.dataset_cfg), keys)

    def streams(self, build, model) -> list[str]:
        """``['rgb', 'pose']`` for RGBPoseHead (its loss components), else ``['rgb']`` or ``['pose']``."""
        from ckpttool.integrations import sampling

        comps = getattr(model.cls_head, "loss_components", None)
        return list(comps) if comps else [sampling.stream_kind(sampling.dataset_pipeline(build.dataset_cfg))]

    def forward(self, model, inputs, streams) -> dict:
        """Raw head scores ``{stream: tensor [V, C]}`` of a batch of views (one pseudo-sample), as
        ``Recognizer.predict`` computes them before ``average_clip``."""
        if isinstance(inputs, dict):
            batch = {"inputs": {m: [t] for m, t in inputs.items()}, "data_samples": None}
        else:
            batch = {"inputs": [inputs], "data_samples": None}
        data = model.data_preprocessor(batch, False)
        feats, kwargs = model.extract_feat(data["inputs"], test_mode=True)
        scores = model.cls_head(feats, **kwargs)
        if isinstance(scores, dict):
            comps = list(getattr(model.cls_head, "loss_components", scores.keys()))
            return {c: scores[c].float().cpu() for c in comps}
        return {streams[0]: scores.reshape(scores.shape[0], -1).float().cpu()}

    def target(self, info: dict) -> int:
        import numpy as np

        return int(np.asarray(info.get("label", -1)).reshape(-1)[0])

    def mode(self, build) -> str:
        """The aggregation used: ``--aggregate``, else the head's ``average_clips``, else ``prob``."""
        return self.aggregate or (build.cfg.model.get("cls_head") or {}).get("average_clips", "prob") or "prob"

    def report(self, build, settings, outputs) -> dict:
        from ckpttool.metrics.ntu import ntu_rows

        results, cached = outputs.results, outputs.cached
        mode = self.mode(build)
        entries = []
        for k in settings:
            labels, views = results[k]
            first = next(iter(views.values()))
            entries.append({"k": k, "rows": ntu_rows(per_sample_scores(views, mode), labels, fusions=True),
                            "cached": k in cached,
                            "num_views": int(first.shape[1]) if first.dtype != object else None})
        first = next(iter(results[settings[0]][1].values()))
        from ckpttool.integrations import sampling

        steps = sampling.find_sampling_steps(sampling.dataset_pipeline(build.dataset_cfg))
        return {"clips": entries, "aggregate": mode, "num_classes": int(first[0].shape[-1]),
                "config_num_clips": int(steps[0][1].get("num_clips", 1))}  # the config's own (marked on --plot)

    def dump(self, directory, build, settings, results) -> list[str]:
        return write_dumps(directory, settings, results, self.mode(build))


class ClipViews:
    """The :class:`ckpttool.engine.adapter.ViewSource` of a recogniser: the per-k pipelines, built once, sharing
    one decode per sample (plan: each pipeline runs to its first frame request; serve: the union is decoded once,
    the stopped pipelines run again)."""

    def __init__(self, pipeline, ks):
        from mmengine.dataset.base_dataset import Compose

        from ckpttool.integrations import sampling
        from ckpttool.integrations.shared_decode import SharedDecode

        self.shared = SharedDecode()
        self.pipelines = {k: Compose(sampling.with_num_clips(pipeline, k)) for k in ks}
        for compose in self.pipelines.values():
            self.shared.attach(compose)

    @property
    def decode_seconds(self) -> float:
        return self.shared.decode_seconds

    def sample(self, info: dict):
        from ckpttool.integrations.shared_decode import PlanStop

        self.shared.next_sample()
        pending = []
        for k, pipeline in self.pipelines.items():
            self.shared.planning = bool(self.shared.patched_steps)
            try:
                packed = pipeline(copy.deepcopy(info))
            except PlanStop:
                pending.append(k)
                continue
            finally:
                self.shared.planning = False
            yield k, packed["inputs"]
        if pending:
            self.shared.prefetch()
        for k in pending:
            yield k, self.pipelines[k](copy.deepcopy(info))["inputs"]
        self.shared.next_sample()

    def stats(self) -> dict:
        s = self.shared
        return {"decode": {"shared": bool(s.patched_steps), "videos_opened": s.videos_opened,
                           "frames_decoded": s.frames_decoded, "frames_requested": s.frames_requested}}


def per_sample_scores(views: dict, mode: str) -> dict:
    """``{stream: [n, V, C]}`` raw view scores -> ``{stream: [n, C]}`` float32, aggregated as ``average_clip``."""
    import numpy as np

    from ckpttool.metrics.ntu import aggregate_views

    def one(v):
        if v.dtype != object:
            return aggregate_views(v, mode)
        return np.stack([aggregate_views(np.asarray(x)[None], mode)[0] for x in v])

    return {s: one(v).astype(np.float32) for s, v in views.items()}


def write_dumps(directory, ks, results, mode) -> list[str]:
    """``DIR/clips_{k}.pkl`` as mmaction2's ``tools/test.py --dump`` writes (a list of ActionDataSample dicts);
    ``directory`` ending in ``.pkl`` (one k): that file itself, as ``tools/test.py --dump FILE.pkl``."""
    import pickle
    from pathlib import Path

    from ckpttool.io.write import write_bytes

    directory = Path(directory)
    if directory.suffix == ".pkl":
        if len(ks) > 1:
            raise CkptError(f"--dump {directory}: one file holds one setting; give --dump DIR for several")
        paths = [str(directory)]
    else:
        directory.mkdir(parents=True, exist_ok=True)
        paths = [str(directory / f"clips_{k}.pkl") for k in ks]
    for k, path in zip(ks, paths):
        labels, views = results[k]
        data = pickle.dumps(_samples(labels, per_sample_scores(views, mode)))
        write_bytes(path, data, force=True)
    return paths


def _samples(labels, scores: dict) -> list[dict]:
    import torch
    from mmaction.structures import ActionDataSample

    streams = list(scores)
    out = []
    for i, label in enumerate(labels):
        ds = ActionDataSample().set_gt_label(int(label))
        if len(streams) == 1:
            score = torch.from_numpy(scores[streams[0]][i].copy())
            ds.set_pred_score(score)
            ds.set_pred_label(score.argmax(dim=-1, keepdim=True))
        else:  # RGBPoseHead: a dict of scores by loss component ('rgb', 'pose')
            ds.set_pred_score({s: torch.from_numpy(scores[s][i].copy()) for s in streams})
        out.append(_to_cpu(ds.to_dict(), torch))
    return out


def _to_cpu(obj, torch):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v, torch) for k, v in obj.items()}
    return obj
