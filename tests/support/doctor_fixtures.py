"""Genuine mmaction2 work_dirs for the training-run doctor (`ckpt runs --explain`, streams, resumed runs).

`python -m tests.support.doctor_fixtures OUT` trains a real mmaction2 two-stream model — `MMRecognizer3D` with a
(tiny) `RGBPoseConv3D` backbone, `RGBPoseHead`, `MultiModalDataPreprocessor`, evaluated by mmaction2's `AccMetric`
(which logs `acc/rgb_top1`, `acc/pose_top1`, `acc/RGBPose_1:1_top1`, … like the published RGBPoseConv3D config) —
with a real `mmengine.runner.Runner`, twice:

* `OUT/collapse/work_dir`: one run of EPOCHS epochs. During epoch COLLAPSE_EPOCH a hook multiplies the lr of the
  pose classifier's (`cls_head.fc_pose`) parameter groups by SPIKE (the other groups keep theirs), so the pose stream collapses;
  `paramwise_cfg` gives one optimizer group per parameter (as mmaction2 configs with custom keys do); MultiStepLR
  steps at epoch LR_MILESTONE; `clip_grad` makes the runner log `grad_norm`; `save_best='acc/RGBPose_1:1_top1'`.
* `OUT/resumed/work_dir`: run `resumed_a` trains 3 epochs; run `resumed_b` (another config: lr halved) resumes
  from its `epoch_1.pth` and trains to epoch 2, so A's `epoch_3.pth` is left from the abandoned run and
  `last_checkpoint` names B's `epoch_2.pth`.

`OUT/facts.json` holds what the live runners computed (a hook captures every validation's metrics, the lr of
group 0 during each epoch, the pose groups' lr, and the iteration counts), never read back from the logs.
Tests call :func:`make_doctor_work_dirs` (cached under pytest's session temp dir; a subprocess keeps mmengine's
state out of the test process).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EPOCHS = 6
COLLAPSE_EPOCH = 4
SPIKE = 400.0
LR = 0.02
LR_MILESTONE = 5
NUM_CLASSES = 6
BEST = "acc/RGBPose_1:1_top1"


def register():
    """Register the in-memory dataset and the hooks in mmaction2's registries (imports torch and mmaction)."""
    import torch
    from mmengine.hooks import Hook

    torch.set_num_threads(1)   # tiny convolutions: threads only contend on a shared machine
    from ckpttool.integrations.mmaction import import_mmaction

    _without_multimodal()
    import_mmaction()
    from mmaction.registry import DATASETS, HOOKS
    from mmaction.structures import ActionDataSample

    @DATASETS.register_module(name="CkptDoctorRGBPose", force=True)
    class RGBPoseData(torch.utils.data.Dataset):
        """Clips whose class shows in both modalities: a colour shift of the frames and a hot joint channel."""

        def __init__(self, num_samples=36, seed=0, pipeline=None):
            g = torch.Generator().manual_seed(seed)
            self.labels = torch.arange(num_samples) % NUM_CLASSES
            self.imgs = torch.randn(num_samples, 1, 3, 2, 32, 32, generator=g)
            self.heat = torch.rand(num_samples, 1, 17, 8, 8, 8, generator=g) * 0.5
            for i, lab in enumerate(self.labels.tolist()):
                self.imgs[i, 0, lab % 3] += 1.5 * (1 + lab // 3)
                self.heat[i, 0, lab] += 2.0
            self.metainfo = dict(classes=tuple(f"c{i}" for i in range(NUM_CLASSES)))

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, idx):
            sample = ActionDataSample().set_gt_label(int(self.labels[idx]))
            return dict(inputs=dict(imgs=self.imgs[idx], heatmap_imgs=self.heat[idx]), data_samples=sample)

    @HOOKS.register_module(name="CkptDoctorLrSpike", force=True)
    class LrSpike(Hook):
        """For one epoch, multiply the lr of the groups holding the parameters under `prefix`."""

        priority = "NORMAL"   # after_train_epoch runs before ParamSchedulerHook (LOW): the spike is undone first

        def __init__(self, epoch, factor, prefix="cls_head.fc_pose."):
            self.epoch, self.factor, self.prefix = epoch, factor, prefix

        def _groups(self, runner):
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            ids = {id(p) for n, p in model.named_parameters() if n.startswith(self.prefix)}
            return [g for g in runner.optim_wrapper.optimizer.param_groups if any(id(p) in ids for p in g["params"])]

        def before_train_epoch(self, runner):
            if runner.epoch + 1 == self.epoch:
                for g in self._groups(runner):
                    g["lr"] *= self.factor

        def after_train_epoch(self, runner):
            if runner.epoch + 1 == self.epoch:
                for g in self._groups(runner):
                    g["lr"] /= self.factor

    @HOOKS.register_module(name="CkptDoctorRecord", force=True)
    class Record(Hook):
        """The test's ground truth: per epoch the runner's metrics, group 0's lr during the epoch, iterations."""

        priority = "VERY_LOW"

        def __init__(self, path, run):
            self.path, self.run = path, run

        def _load(self):
            p = Path(self.path)
            return json.loads(p.read_text()) if p.exists() else {}

        def _save(self, facts):
            Path(self.path).write_text(json.dumps(facts))

        def before_train_epoch(self, runner):
            facts = self._load()
            run = facts.setdefault(self.run, {"metrics": {}, "lr": {}, "iters": {}, "experiment_name":
                                              runner.experiment_name, "timestamp": runner.timestamp})
            groups = runner.optim_wrapper.optimizer.param_groups
            run["lr"][str(runner.epoch + 1)] = groups[0]["lr"]
            run["groups"] = len(groups)
            self._save(facts)

        def after_val_epoch(self, runner, metrics=None):
            facts = self._load()
            run = facts[self.run]
            run["metrics"][str(runner.epoch)] = {k: float(v) for k, v in (metrics or {}).items()}
            run["iters"][str(runner.epoch)] = runner.iter
            self._save(facts)


def _without_multimodal() -> None:
    """mmaction2 imports its VindLU models (timm, which imports torchvision) whenever `transformers` is installed;
    the reachable torchvision wheels do not import with the CPU torch. The fixtures need no multimodal model: when
    torchvision cannot be imported, tell mmaction2 that the multimodal extra is absent (its own switch)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        import mmaction.utils.dependency as dep

        dep.WITH_MULTIMODAL = False


def model_cfg() -> dict:
    rgb = dict(num_stages=4, lateral=True, lateral_infl=1, lateral_activate=(0, 0, 1, 1), fusion_kernel=7,
               base_channels=8, conv1_kernel=(1, 7, 7), inflate=(0, 0, 1, 1), with_pool2=False,
               stage_blocks=(1, 1, 1, 1))
    pose = dict(num_stages=3, stage_blocks=(1, 1, 1), lateral=True, lateral_inv=True, lateral_infl=16,
                lateral_activate=(0, 1, 1), fusion_kernel=7, in_channels=17, base_channels=4, out_indices=(2,),
                conv1_kernel=(1, 7, 7), conv1_stride_s=1, conv1_stride_t=1, pool1_stride_s=1, pool1_stride_t=1,
                inflate=(0, 1, 1), spatial_strides=(2, 2, 2), temporal_strides=(1, 1, 1), dilations=(1, 1, 1),
                with_pool2=False)
    return dict(
        type="MMRecognizer3D",
        backbone=dict(type="RGBPoseConv3D", speed_ratio=4, channel_ratio=4, rgb_pathway=rgb, pose_pathway=pose),
        cls_head=dict(type="RGBPoseHead", num_classes=NUM_CLASSES, in_channels=[256, 64], loss_components=["rgb", "pose"],
                      loss_weights=[1.0, 1.0], dropout=0.0, average_clips="prob"),
        data_preprocessor=dict(type="MultiModalDataPreprocessor", preprocessors=dict(
            imgs=dict(type="ActionDataPreprocessor", format_shape="NCTHW"),
            heatmap_imgs=dict(type="ActionDataPreprocessor", format_shape="NCTHW"))))


def runner_cfg(work_dir: str, facts: str, run: str, epochs: int, lr: float = LR, spike: bool = False,
               resume_from: str | None = None) -> dict:
    loader = dict(num_workers=0, collate_fn=dict(type="pseudo_collate"))
    hooks = [dict(type="CkptDoctorRecord", path=facts, run=run)]
    if spike:
        hooks.insert(0, dict(type="CkptDoctorLrSpike", epoch=COLLAPSE_EPOCH, factor=SPIKE))
    cfg = dict(
        model=model_cfg(),
        work_dir=work_dir,
        experiment_name=run,
        train_dataloader=dict(batch_size=4, sampler=dict(type="DefaultSampler", shuffle=True),
                              dataset=dict(type="CkptDoctorRGBPose", num_samples=36, seed=0), **loader),
        val_dataloader=dict(batch_size=12, sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=dict(type="CkptDoctorRGBPose", num_samples=24, seed=1), **loader),
        val_evaluator=[dict(type="AccMetric")],
        val_cfg=dict(type="ValLoop"),
        train_cfg=dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_begin=1, val_interval=1),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=lr, momentum=0.9, weight_decay=1e-4),
                           clip_grad=dict(max_norm=1e6, norm_type=2),
                           paramwise_cfg=dict(custom_keys={"backbone.pose_path": dict(lr_mult=1.0)})),
        param_scheduler=[dict(type="MultiStepLR", by_epoch=True, milestones=[LR_MILESTONE], gamma=0.1)],
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1, save_best=BEST, rule="greater"),
                           logger=dict(type="LoggerHook", interval=2)),
        custom_hooks=hooks,
        randomness=dict(seed=5, deterministic=False),
        log_level="INFO",
        default_scope="mmaction",
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="gloo")),
        launcher="none",
    )
    if resume_from:
        cfg.update(load_from=resume_from, resume=True)
    return cfg


def _train(cfg: dict) -> None:
    from mmengine.config import Config
    from mmengine.runner import Runner

    Runner.from_cfg(Config(cfg)).train()


def build(out: str) -> dict:
    """Train both work_dirs under OUT; write OUT/facts.json."""
    import time

    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    facts = str(out_p / "runner_facts.json")
    collapse = str(out_p / "collapse" / "work_dir")
    _train(runner_cfg(collapse, facts, "collapse", EPOCHS, spike=True))
    resumed = str(out_p / "resumed" / "work_dir")
    _train(runner_cfg(resumed, facts, "resumed_a", 3))
    time.sleep(1.1)   # mmengine names log folders by the second
    # mmengine 0.10.7 cannot torch.load its own checkpoints under torch >= 2.6 (weights_only + HistoryBuffer); these
    # are files this process just wrote, so its resume may unpickle them in full
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    _train(runner_cfg(resumed, facts, "resumed_b", 2, lr=LR / 2, resume_from=os.path.join(resumed, "epoch_1.pth")))
    seen = json.loads(Path(facts).read_text())
    result = {"collapse": {"work_dir": collapse, "epochs": EPOCHS, "collapse_epoch": COLLAPSE_EPOCH, "spike": SPIKE,
                           "lr_milestone": LR_MILESTONE, "best_metric": BEST,
                           "best_files": sorted(f for f in os.listdir(collapse) if f.startswith("best_")),
                           **seen["collapse"]},
              "resumed": {"work_dir": resumed, "a": seen["resumed_a"], "b": seen["resumed_b"],
                          "last_checkpoint": Path(resumed, "last_checkpoint").read_text().strip()}}
    (out_p / "facts.json").write_text(json.dumps(result, indent=1))
    return result


def make_doctor_work_dirs(base: Path) -> dict:
    """The facts, building the work_dirs once under `base` (in a subprocess)."""
    facts = Path(base) / "facts.json"
    if not facts.exists():
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, "-m", "tests.support.doctor_fixtures", str(base)], cwd=root, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"doctor fixtures failed:\n{proc.stderr[-4000:]}")
    return json.loads(facts.read_text())


if __name__ == "__main__":
    register()
    build(sys.argv[1])
