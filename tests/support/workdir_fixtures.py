"""A real mmengine work_dir for `ckpt runs` / `ckpt average --work-dir`, plus hand-written log text.

`python -m tests.support.workdir_fixtures OUT` trains a tiny conv+BN+linear classifier with a real
`mmengine.runner.Runner` for 4 epochs (val every epoch; `CkptRunsTop1` logs `acc/top1` and `acc/mean1` as
fractions, like mmaction2; CheckpointHook interval 1) into `OUT/work_dir`, and writes `OUT/facts.json`: the
metrics and iteration counts of the live runner per epoch (captured by a hook, not read back from the logs) and
`OUT/config.py` (the same run as a config file). Tests call :func:`make_work_dir` (cached under pytest's session
temp dir), which runs this in a subprocess so mmengine's global state stays out of the test process. The toy names
(`CkptRuns*`) are registered on import when mmengine is already loaded (a config's custom_imports), else by
:func:`register`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EPOCHS = 4

# Real mmengine log lines (format of mmengine 0.10 LogProcessor), an mmaction2 run that collapses at epoch 12.
COLLAPSE_LOG = """\
2024/03/02 10:11:12 - mmengine - INFO - Epoch(train)  [10][8200/8244]  lr: 1.0000e-02  eta: 1:02:03  time: 0.3012  data_time: 0.0101  memory: 5120  loss: 0.8123  top1_acc: 0.7500  loss_cls: 0.8123
2024/03/02 10:12:40 - mmengine - INFO - Saving checkpoint at 10 epochs
2024/03/02 10:20:01 - mmengine - INFO - Epoch(val) [10][8244/8244]    acc/top1: 0.5512  acc/top5: 0.8100  acc/mean1: 0.5400  data_time: 0.0012  time: 0.0345
2024/03/02 11:00:00 - mmengine - INFO - Epoch(train)  [11][8244/8244]  lr: 1.0000e-02  eta: 0:50:00  time: 0.3010  data_time: 0.0100  memory: 5120  loss: 0.7001
2024/03/02 11:01:00 - mmengine - INFO - Saving checkpoint at 11 epochs
2024/03/02 11:09:30 - mmengine - INFO - Epoch(val) [11][8244/8244]    acc/top1: 0.5745  acc/top5: 0.8312  acc/mean1: 0.5620  data_time: 0.0011  time: 0.0340
2024/03/02 11:09:31 - mmengine - INFO - The best checkpoint with 0.5745 acc/top1 at 11 epoch is saved to best_acc_top1_epoch_11.pth.
2024/03/02 12:00:00 - mmengine - INFO - Epoch(train)  [12][8244/8244]  lr: 1.0000e-02  eta: 0:40:00  time: 0.3010  data_time: 0.0100  memory: 5120  loss: 2.1001
2024/03/02 12:01:00 - mmengine - INFO - Saving checkpoint at 12 epochs
2024/03/02 12:09:30 - mmengine - INFO - Epoch(val) [12][8244/8244]    acc/top1: 0.3264  acc/top5: 0.6001  acc/mean1: 0.3100  data_time: 0.0011  time: 0.0341
2024/03/02 13:09:30 - mmengine - INFO - Epoch(val) [13][8244/8244]    acc/top1: 0.4410  acc/top5: 0.7002  acc/mean1: 0.4300  data_time: 0.0011  time: 0.0341
"""
# epoch -> acc/top1 as written above (what a parser must find)
COLLAPSE_TOP1 = {10: 0.5512, 11: 0.5745, 12: 0.3264, 13: 0.4410}


def register():
    """Register the toy model, dataset, metric and hook in mmengine's root registries (imports torch)."""
    import torch
    import torch.nn.functional as F
    from mmengine.evaluator import BaseMetric
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
    from torch import nn

    @MODELS.register_module(name="CkptRunsToyNet", force=True)
    class ToyNet(BaseModel):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, inputs, data_samples=None, mode="tensor"):
            logits = self.fc(F.relu(self.bn(self.conv(inputs))).mean(dim=(2, 3)))
            if mode == "loss":
                return dict(loss=F.cross_entropy(logits, data_samples))
            if mode == "predict":
                return [dict(pred=int(p), gt=int(g)) for p, g in zip(logits.argmax(1), data_samples)]
            return logits

    @DATASETS.register_module(name="CkptRunsToyData", force=True)
    class ToyData(torch.utils.data.Dataset):
        def __init__(self, num_samples=32, seed=0):
            g = torch.Generator().manual_seed(seed)
            self.labels = torch.randint(0, 4, (num_samples,), generator=g)
            self.images = torch.randn(num_samples, 3, 8, 8, generator=g)
            for i, lab in enumerate(self.labels.tolist()):
                self.images[i, lab % 3] += 0.5 * (1 + lab)
            self.metainfo = dict(classes=("a", "b", "c", "d"))

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, idx):
            return dict(inputs=self.images[idx], data_samples=self.labels[idx])

    @METRICS.register_module(name="CkptRunsTop1", force=True)
    class Top1(BaseMetric):
        default_prefix = "acc"

        def process(self, data_batch, data_samples):
            self.results.extend(data_samples)

        def compute_metrics(self, results):
            n = max(len(results), 1)
            per_class = [[r["pred"] == r["gt"] for r in results if r["gt"] == c] for c in range(4)]
            mean1 = sum(sum(c) / len(c) for c in per_class if c) / max(sum(1 for c in per_class if c), 1)
            return dict(top1=sum(r["pred"] == r["gt"] for r in results) / n, mean1=mean1)

    @HOOKS.register_module(name="CkptRunsRecord", force=True)
    class Record(Hook):
        """Writes the metrics the runner computed, per epoch, to a JSON file (the test's ground truth)."""

        def __init__(self, path):
            self.path, self.seen = path, {"metrics": {}, "iters": {}}

        def after_val_epoch(self, runner, metrics=None):
            self.seen["metrics"][str(runner.epoch)] = {k: float(v) for k, v in (metrics or {}).items()}
            self.seen["iters"][str(runner.epoch)] = runner.iter
            Path(self.path).write_text(json.dumps(self.seen))


def runner_cfg(work_dir: str, facts: str, epochs: int = EPOCHS) -> dict:
    loader = dict(num_workers=0, collate_fn=dict(type="default_collate"))
    return dict(
        model=dict(type="CkptRunsToyNet"),
        work_dir=work_dir,
        experiment_name="ckpt_runs_toy",
        train_dataloader=dict(batch_size=8, sampler=dict(type="DefaultSampler", shuffle=False),
                              dataset=dict(type="CkptRunsToyData", num_samples=32, seed=0), **loader),
        val_dataloader=dict(batch_size=16, sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=dict(type="CkptRunsToyData", num_samples=16, seed=1), **loader),
        val_evaluator=dict(type="CkptRunsTop1"),
        val_cfg=dict(),
        train_cfg=dict(by_epoch=True, max_epochs=epochs, val_interval=1),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.8, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=[dict(type="CkptRunsRecord", path=facts)],
        randomness=dict(seed=3),
        log_level="INFO",
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="gloo")),
        launcher="none",
    )


def config_text(work_dir: str, facts: str) -> str:
    """The same run as an mmengine config file (used by `--update-bn`); imports this module for the registry."""
    cfg = runner_cfg(work_dir, facts)
    lines = ["custom_imports = dict(imports=['tests.support.workdir_fixtures'], allow_failed_imports=False)"]
    lines += [f"{k} = {v!r}" for k, v in cfg.items()]
    return "\n".join(lines) + "\n"


def build(out: str) -> dict:
    """Train into OUT/work_dir (in this process); write OUT/config.py and OUT/facts.json."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    work_dir, facts = str(out_p / "work_dir"), str(out_p / "metrics.json")
    (out_p / "config.py").write_text(config_text(work_dir, facts))
    Runner.from_cfg(Config(runner_cfg(work_dir, facts))).train()
    seen = json.loads(Path(facts).read_text())
    result = {"work_dir": work_dir, "config": str(out_p / "config.py"), "epochs": EPOCHS, **seen}
    (out_p / "facts.json").write_text(json.dumps(result))
    return result


def make_work_dir(base: Path) -> dict:
    """The work_dir facts, building it once under `base` (a subprocess: mmengine state stays out of the tests)."""
    facts = Path(base) / "facts.json"
    if not facts.exists():
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-m", "tests.support.workdir_fixtures", str(base)], check=True,
                       cwd=root, env=env, stdout=subprocess.DEVNULL)
    return json.loads(facts.read_text())


if "mmengine" in sys.modules:  # imported by an mmengine config (custom_imports): register the toy names
    register()

if __name__ == "__main__":
    register()
    build(sys.argv[1])
