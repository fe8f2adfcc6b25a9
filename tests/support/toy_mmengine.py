"""Toy model, dataset and metric registered in mmengine's root registries.

Used by the real-``Runner`` fixtures in :mod:`tests.support.fixtures` (families ``mmengine`` and ``diff``).
Importing this module registers:

* ``MODELS``:   ``CkptToyClassifier`` — conv(3->8, 3x3) + BN(8) + two linear heads (8->4).
* ``DATASETS``: ``CkptToyDataset``    — a seeded in-memory dataset of 3x8x8 images; its ``pipeline`` argument
  (a list of transform dicts) is stored as-is and never applied, so configs can differ in a pipeline parameter.
* ``METRICS``:  ``CkptToyAccuracy``   — top-1 accuracy in percent.
* ``HOOKS``:    ``CkptFactsHook``     — records facts of the checkpoint dict just before it is saved (the
  generator registers it programmatically, so it never appears in the saved config).

Module tree / parameter counts (computed from the shapes; ``PARAM_COUNTS`` below is the source of truth):

=================  ===========================================  ======
module             tensors                                       params
=================  ===========================================  ======
backbone.conv      weight [8,3,3,3], bias [8]                    224
backbone.bn        weight [8], bias [8] (+ buffers running_mean,  16
                   running_var [8], num_batches_tracked [])
head.fc            weight [4,8], bias [4]                        36
head.aux           weight [4,8], bias [4]                        36
=================  ===========================================  ======

Total 312 parameters; 17 buffer elements (8 + 8 + 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
from torch import nn

IN_CHANNELS = 3
CHANNELS = 8
NUM_CLASSES = 4
IMAGE_SIZE = 8

PARAM_COUNTS = {
    "backbone.conv": CHANNELS * IN_CHANNELS * 3 * 3 + CHANNELS,
    "backbone.bn": 2 * CHANNELS,
    "head.fc": NUM_CLASSES * CHANNELS + NUM_CLASSES,
    "head.aux": NUM_CLASSES * CHANNELS + NUM_CLASSES,
}
PARAM_COUNTS_BY_TOP = {
    "backbone": PARAM_COUNTS["backbone.conv"] + PARAM_COUNTS["backbone.bn"],
    "head": PARAM_COUNTS["head.fc"] + PARAM_COUNTS["head.aux"],
}
TOTAL_PARAMS = sum(PARAM_COUNTS.values())


class _Backbone(nn.Module):
    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return x.mean(dim=(2, 3))


class _Head(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)
        self.aux = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(x), self.aux(x)


@MODELS.register_module(force=True)
class CkptToyClassifier(BaseModel):
    """conv + BN + two linear heads; ``loss_weights`` weighs (loss_cls, loss_aux)."""

    def __init__(self, in_channels=IN_CHANNELS, channels=CHANNELS, num_classes=NUM_CLASSES,
                 loss_weights=(1.0, 1.0), data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.loss_weights = list(loss_weights)
        self.backbone = _Backbone(in_channels, channels)
        self.head = _Head(channels, num_classes)

    def forward(self, inputs, data_samples=None, mode="tensor"):
        feats = self.backbone(inputs)
        logits, aux = self.head(feats)
        if mode == "loss":
            return dict(loss_cls=F.cross_entropy(logits, data_samples) * self.loss_weights[0],
                        loss_aux=F.cross_entropy(aux, data_samples) * self.loss_weights[1])
        if mode == "predict":
            pred = logits.argmax(dim=1)
            return [dict(pred=int(p), gt=int(g)) for p, g in zip(pred, data_samples)]
        return logits


@DATASETS.register_module(force=True)
class CkptToyDataset(torch.utils.data.Dataset):
    """``num_samples`` seeded random images with labels; ``pipeline`` is stored, not applied."""

    METAINFO = dict(classes=("a", "b", "c", "d"))

    def __init__(self, num_samples=16, num_classes=NUM_CLASSES, size=IMAGE_SIZE, seed=0, pipeline=None):
        g = torch.Generator().manual_seed(seed)
        self.pipeline = list(pipeline or [])
        self.metainfo = dict(self.METAINFO)
        self.labels = torch.randint(0, num_classes, (num_samples,), generator=g)
        self.images = torch.randn(num_samples, IN_CHANNELS, size, size, generator=g)
        # make the labels learnable: shift the mean of channel (label % 3)
        for i, lab in enumerate(self.labels.tolist()):
            self.images[i, lab % IN_CHANNELS] += 1.0 + lab

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return dict(inputs=self.images[idx], data_samples=self.labels[idx])


@METRICS.register_module(force=True)
class CkptToyAccuracy(BaseMetric):
    default_prefix = "toy"

    def process(self, data_batch, data_samples):
        self.results.extend(data_samples)

    def compute_metrics(self, results):
        correct = sum(int(r["pred"] == r["gt"]) for r in results)
        return dict(accuracy=100.0 * correct / max(len(results), 1))


@HOOKS.register_module(force=True)
class CkptFactsHook(Hook):
    """Runs last in ``before_save_checkpoint`` (after EMAHook's swap) and records what is about to be saved."""

    priority = "LOWEST"

    def __init__(self, check_keys=("backbone.conv.weight", "head.fc.weight", "head.aux.bias")):
        self.check_keys = list(check_keys)
        self.facts = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub", {})
        sd = checkpoint["state_dict"]
        ema = checkpoint.get("ema_state_dict", {})
        opt = checkpoint.get("optimizer", {})
        self.facts = dict(
            top_level_keys=list(checkpoint),
            meta_keys=list(checkpoint.get("meta", {})),
            experiment_name=checkpoint.get("meta", {}).get("experiment_name"),
            message_hub_scalar_keys=list(hub.get("log_scalars", {})),
            message_hub_runtime_info_keys=list(hub.get("runtime_info", {})),
            state_dict_keys=list(sd),
            ema_state_dict_keys=list(ema),
            optimizer_state_keys=sorted({k for s in opt.get("state", {}).values() for k in s}),
            num_optimizer_states=len(opt.get("state", {})),
            lr_at_save=opt["param_groups"][0]["lr"] if opt.get("param_groups") else None,
            ema_steps=int(ema["steps"]) if "steps" in ema else None,
            ema_sums={k: float(sd[k].double().sum()) for k in self.check_keys},
            raw_sums={k: float(ema["module." + k].double().sum()) for k in self.check_keys if ema},
            ema_raw_max_abs_diff={k: float((sd[k].double() - ema["module." + k].double()).abs().max())
                                  for k in self.check_keys if ema},
        )
