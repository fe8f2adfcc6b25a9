"""The model tasks of ``ckpt eval CONFIG CHECKPOINT``: the one pipeline (:func:`ckpttool.engine.pipeline.evaluate`)
with a task adapter from :mod:`ckpttool.integrations`, and the options each task takes.

    from ckpttool.engine.tasks import evaluate_recognizer, evaluate_detector
    evaluate_recognizer("posec3d.py", "epoch_24.pth", clips=[1, 3, 5])          # NTU60 rows per clip count
    evaluate_detector("frcnn.py", "best.pth", "KAIST_annotation.json", tta="none,flip")   # KAIST rows per setting
"""
from __future__ import annotations

from pathlib import Path

from ckpttool.errors import CkptError


def evaluate_recognizer(config, checkpoint, clips=None, aggregate: str | None = "prob", cfg_options=None, split=None,
                        views_per_batch=None, cache=None, device: str | None = None, launcher: str = "none",
                        limit=None, dump=None, project_root=None, progress: bool | None = None) -> dict:
    """An mmaction2 recogniser on ``config``'s test split for every clip count in ``clips`` (multi-clip TTA).

    Returns ``{"task": "ntu60", "config", "checkpoint", "clips": [{"k", "rows", "cached", "num_views"}], …}``
    where ``rows`` are :func:`ckpttool.metrics.ntu.ntu_rows` of the per-stream scores (and fusions).
    ``aggregate=None`` averages views as the model's head is configured to (``average_clips``); ``clips=None``
    evaluates the config's own ``num_clips``. ``device=None``: cuda when torch sees one, else cpu. ``dump``: a folder
    for ``clips_<k>.pkl``, or (one clip count) a ``FILE.pkl`` as ``tools/test.py --dump`` writes. ``progress``: a
    bar of the samples (rate, ETA) on stderr (ckpttool.report.progress). See docs/eval-tta.md.
    """
    from ckpttool.integrations.mmaction_recognizer import RecognizerAdapter
    from ckpttool.options import parse_clips

    if dump is not None and str(dump).endswith(".pkl") and clips is not None and len(parse_clips(clips)) > 1:
        raise CkptError(f"--dump {dump}: one file holds one setting; give --dump DIR for --clips "
                        f"{','.join(map(str, parse_clips(clips)))} (DIR/clips_<k>.pkl)")
    return _run(RecognizerAdapter(aggregate), config, checkpoint, clips, cfg_options, split, project_root, dump,
                dict(views_per_batch=views_per_batch, cache=cache, device=device, launcher=launcher, limit=limit,
                     progress=progress))


def evaluate_detector(config, checkpoint, ann, tta="none", cfg_options=None, project_root=None, dump=None,
                      cache=None, device=None, launcher="none", limit=None, protocol="mlpd", setup="Reasonable",
                      curves=False, progress=None) -> dict:
    """An mmdetection detector on its test set under each TTA setting (``tta``: ``none``, ``flip``,
    ``scale:WxH[:WxH…]``, ``+`` combinations, ``config``); KAIST rows per setting, each distinct view run once.
    See :mod:`ckpttool.integrations.mmdet` and docs/eval-detector.md."""
    from ckpttool.integrations.mmdet import DetectorAdapter

    if dump and Path(dump).exists() and not Path(dump).is_dir():
        raise CkptError(f"--dump {dump}: exists and is not a directory")
    return _run(DetectorAdapter(ann, protocol, setup, curves), config, checkpoint, tta or "none", cfg_options, None,
                project_root, dump, dict(cache=cache, device=device, launcher=launcher, limit=limit,
                                         progress=progress))


def detector_task(config, checkpoint, ann=None, tta=None, split=None, views_per_batch=None, **options) -> dict:
    """:func:`evaluate_detector` with ``ckpt eval``'s options, refusing those a detector run does not take."""
    if not ann:
        raise CkptError("--task kaist with CONFIG CHECKPOINT needs --ann KAIST_annotation.json")
    if split is not None:
        raise CkptError("--split: a detector runs the config's test_dataloader (use --cfg-options to change it)")
    if views_per_batch is not None:
        raise CkptError("--views-per-batch: detector views run as tools/test.py does, one image per forward pass")
    return evaluate_detector(config, checkpoint, ann, tta=tta or "none", **options)


def _run(adapter, config, checkpoint, settings, cfg_options, split, project_root, dump, options: dict) -> dict:
    from ckpttool.engine.pipeline import Options, evaluate
    from ckpttool.integrations.openmmlab import resolve_device

    options = Options(**dict(options, device=resolve_device(options.get("device"))))
    return evaluate(adapter, config, checkpoint, settings, cfg_options=cfg_options, split=split,
                    project_root=project_root, dump=dump, options=options)
