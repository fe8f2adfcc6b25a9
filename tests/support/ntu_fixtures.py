"""Tiny versions of mmaction2's shipped NTU60 configs (PoseC3D SlowOnly keypoint, RGBPoseConv3D) for CPU tests.

The option dicts are ``--cfg-options`` for ``ckpttool.integrations.openmmlab.load_config``: they shrink depth,
widths and clip lengths so a model builds in well under a second and a forward pass takes milliseconds.

``ntu_workdir`` (a session fixture) runs ``python -m tests.support.ntu_fixtures OUT`` in a subprocess, so that the
mmengine Runner's seeding and process settings stay out of the test process. It writes the synthetic dataset
(:mod:`tests.support.ntu_synth`), trains both tiny models one epoch with a real ``Runner`` (their ``epoch_1.pth``
are the checkpoints under test) and dumps mmaction2's own ``Runner.test()`` predictions for the clip counts in
``REFERENCE_CLIPS`` — the numbers ``ckpt eval`` must reproduce. Returns the ``manifest.json`` it wrote.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

POSEC3D_CONFIG = "slowonly_r50_8xb16-u48-240e_ntu60-xsub-keypoint"
RGBPOSE_CONFIG = "rgbpose_conv3d/rgbpose_conv3d"

# PoseC3D SlowOnly (keypoint heatmaps, 17 channels): ResNet18-style blocks, 4 base channels, one block a stage.
TINY_POSEC3D_MODEL = {
    "model.cls_head.init_std": 0.5,  # spread-out scores, so that score comparisons mean something
    "model.backbone.depth": 18,
    "model.backbone.base_channels": 4,
    "model.backbone.stage_blocks": (1, 1, 1),
    "model.cls_head.in_channels": 16,  # 4 * 2**2 * expansion 1
}

# RGBPoseConv3D: both pathways ResNet18-style with one block a stage.
TINY_RGBPOSE_MODEL = {
    "model.cls_head.init_std": 0.5,
    "model.backbone.rgb_pathway.depth": 18,
    "model.backbone.rgb_pathway.base_channels": 8,
    "model.backbone.rgb_pathway.stage_blocks": (1, 1, 1, 1),
    "model.backbone.pose_pathway.depth": 18,
    "model.backbone.pose_pathway.base_channels": 4,
    "model.backbone.pose_pathway.stage_blocks": (1, 1, 1),
    "model.cls_head.in_channels": [64, 16],  # rgb 8 * 2**3, pose 4 * 2**2
}


def _loader(prefix: str, batch_size: int = 1) -> dict:
    return {f"{prefix}.num_workers": 0, f"{prefix}.persistent_workers": False, f"{prefix}.batch_size": batch_size}


def posec3d_options(data: dict, clip_len: int = 12, size: int = 32) -> dict:
    """``--cfg-options`` that shrink the shipped PoseC3D NTU60 config and point it at a synthetic dataset
    (see :mod:`tests.support.ntu_synth`): model, test/val/train pipelines (by step index) and dataloaders."""
    ann = data["ann_file"]
    opts = dict(TINY_POSEC3D_MODEL)
    opts.update({"load_from": None, "randomness": {"seed": 0}, "default_hooks.logger.interval": 1000,
                 "log_level": "WARNING"})
    for split in ("test", "val"):
        p = f"{split}_dataloader.dataset"
        opts.update({f"{p}.ann_file": ann, f"{p}.pipeline.0.clip_len": clip_len,
                     f"{p}.pipeline.3.scale": (-1, size), f"{p}.pipeline.4.crop_size": size})
        opts.update(_loader(f"{split}_dataloader"))
    p = "train_dataloader.dataset"
    opts.update({f"{p}.times": 1, f"{p}.dataset.ann_file": ann, f"{p}.dataset.pipeline.0.clip_len": clip_len,
                 f"{p}.dataset.pipeline.3.scale": (-1, size), f"{p}.dataset.pipeline.5.scale": (size, size),
                 "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1000})
    opts.update(_loader("train_dataloader", 4))
    return opts


def rgbpose_options(data: dict, rgb_len: int = 4, pose_len: int = 16, size: int = 32) -> dict:
    """Same for the shipped RGBPoseConv3D config: RGB clips of ``rgb_len`` frames at ``size``², pose heatmaps of
    ``pose_len`` frames at a quarter of that (the pathway ratio of the original 8/32 frames, 224/56 pixels)."""
    ann, videos = data["ann_file"], data["video_root"]
    opts = dict(TINY_RGBPOSE_MODEL)
    opts.update({"load_from": None, "randomness": {"seed": 0}, "default_hooks.logger.interval": 1000,
                 "log_level": "WARNING"})
    for split in ("test", "val"):
        p = f"{split}_dataloader.dataset"
        opts.update({f"{p}.ann_file": ann, f"{p}.data_prefix.video": videos,
                     f"{p}.pipeline.0.clip_len": {"RGB": rgb_len, "Pose": pose_len},
                     f"{p}.pipeline.3.scale": (size, size)})
        opts.update(_loader(f"{split}_dataloader"))
    p = "train_dataloader.dataset"
    opts.update({f"{p}.ann_file": ann, f"{p}.data_prefix.video": videos,
                 f"{p}.pipeline.0.clip_len": {"RGB": rgb_len, "Pose": pose_len},
                 f"{p}.pipeline.3.scale": (size + size // 4, size + size // 4),
                 f"{p}.pipeline.5.scale": (size, size), "train_cfg.max_epochs": 1, "train_cfg.val_interval": 1000})
    opts.update(_loader("train_dataloader", 4))
    return opts


def train_checkpoint(config, options: dict, work_dir) -> "Path":
    """Train one epoch with a real mmengine ``Runner`` and return the checkpoint it saved (``epoch_1.pth``)."""
    from pathlib import Path

    from ckpttool.integrations.mmaction import import_mmaction
    from ckpttool.integrations.openmmlab import load_config
    from mmengine.runner import Runner

    import_mmaction()
    cfg = load_config(config, {**options, "work_dir": str(work_dir)})
    runner = Runner.from_cfg(cfg)
    runner.train()
    path = Path(work_dir) / "epoch_1.pth"
    assert path.is_file(), f"the Runner saved no checkpoint in {work_dir}"
    return path


def mmaction_test_dump(config, options: dict, checkpoint, k: int, work_dir, limit: int | None = None) -> list:
    """mmaction2's own ``Runner.test()`` with ``num_clips=k`` and ``DumpResults`` (as ``tools/test.py --dump``);
    returns the dumped list. Weights are loaded with ``torch.load`` (mmengine's loader fails on torch >= 2.6)."""
    import pickle
    from pathlib import Path

    import torch
    from ckpttool.integrations.sampling import find_sampling_steps
    from ckpttool.integrations.mmaction import import_mmaction
    from ckpttool.integrations.openmmlab import load_config
    from mmengine.runner import Runner

    import_mmaction()
    work_dir = Path(work_dir)
    dump = work_dir / f"mmaction_clips_{k}.pkl"
    cfg = load_config(config, {**options, "work_dir": str(work_dir), "load_from": None,
                               "test_evaluator": [dict(type="DumpResults", out_file_path=str(dump))]})
    for _, step in find_sampling_steps(cfg.test_dataloader.dataset.pipeline):
        step["num_clips"] = k
    if limit is not None:
        cfg.test_dataloader.dataset.indices = limit
    runner = Runner.from_cfg(cfg)
    state = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["state_dict"]
    runner.model.load_state_dict(state)
    runner.test()
    with open(dump, "rb") as fh:
        return pickle.load(fh)


REFERENCE_CLIPS = {"posec3d": (1, 3, 5), "rgbpose": (1, 3)}
SCORE_REFERENCE_CLIPS = 3  # PoseC3D with the head's average_clips='score'
DATA_SIZES = {"num_train": 4, "num_val": 5}


def model_setups(data: dict) -> dict:
    """``{name: (config path, options)}`` of the two tiny models for ``data``."""
    from ckpttool.integrations.mmaction import shipped_config

    return {"posec3d": (shipped_config(POSEC3D_CONFIG), posec3d_options(data)),
            "rgbpose": (shipped_config(RGBPOSE_CONFIG), rgbpose_options(data))}


def build_workdir(out) -> dict:
    """Dataset, Runner-trained checkpoints and mmaction2 reference dumps under ``out``; returns the manifest."""
    from tests.support.ntu_synth import make_ntu60

    out = Path(out)
    data = make_ntu60(out / "data", **DATA_SIZES)
    manifest = {"data": data, "models": {}}
    for name, (config, options) in model_setups(data).items():
        work = out / name
        ckpt = train_checkpoint(config, options, work)
        refs = {}
        for k in REFERENCE_CLIPS[name]:
            mmaction_test_dump(config, options, ckpt, k, work / "reference")
            refs[str(k)] = str(work / "reference" / f"mmaction_clips_{k}.pkl")
        entry = {"config": str(config), "checkpoint": str(ckpt), "reference": refs}
        if name == "posec3d":
            k = SCORE_REFERENCE_CLIPS
            opts = {**options, "model.cls_head.average_clips": "score"}
            mmaction_test_dump(config, opts, ckpt, k, work / "reference_score")
            entry["reference_score"] = {str(k): str(work / "reference_score" / f"mmaction_clips_{k}.pkl")}
        manifest["models"][name] = entry
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


@pytest.fixture(scope="session")
def ntu_workdir(tmp_path_factory) -> dict:
    pytest.importorskip("mmaction")
    out = tmp_path_factory.mktemp("ntu_workdir")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", "tests.support.ntu_fixtures", str(out)],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the NTU work dir failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["root"] = str(out)
    return manifest


if __name__ == "__main__":
    build_workdir(sys.argv[1])
