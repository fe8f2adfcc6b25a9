"""The genuine corpus: checkpoints written by the real libraries' own saving code (tiny CPU models).

Every file here is what a user of that library gets on disk; ``ckpt`` must call each of them **data** (no false
alarm) and read its tensors exactly as torch does (tests/test_genuine_corpus.py). Nothing is hand-pickled: each
family calls the library's saving path (``Runner.train()`` + ``CheckpointHook``, ``CheckpointSaver.save_checkpoint``,
``Trainer.fit`` + ``ModelCheckpoint``, ``save_pretrained``, ``Trainer.train``, ``Accelerator.save_state``,
``torch.distributed.checkpoint.save``, ``torch.save``). Where the era's library cannot run here, the module says so
next to the family and builds the dict that library's code builds, with the same calls:

* ``mmcv1``      — mmcv 2 has no ``mmcv.runner.save_checkpoint``; the dict layout of mmcv 1.7's
  ``save_checkpoint`` / ``EpochBasedRunner.save_checkpoint`` is reproduced (meta with ``mmcv_version``, ``time``,
  ``config`` text, ``CLASSES``, ``epoch``/``iter``, ``hook_msgs``; ``state_dict`` via ``weights_to_cpu(get_state_dict
  (model))`` — mmengine kept both functions unchanged; ``optimizer``) and saved with ``torch.save``.
* ``torchvision`` — torchvision cannot be imported here (the reachable wheels are CUDA builds); its reference
  script ``references/classification/train.py`` saves ``{'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'
  (argparse.Namespace of that script's parser), 'model_ema', 'scaler'}``: built with a torch model, the same
  parser arguments, ``torch.optim.swa_utils.AveragedModel`` (the base class of torchvision's
  ``ExponentialMovingAverage``) and ``torch.amp.GradScaler``.
* ``timm``       — ``import timm`` imports torchvision.datasets/transforms. We import timm's own
  ``timm.utils.checkpoint_saver`` / ``timm.utils.model_ema`` / ``timm.utils.model`` / ``timm.layers`` modules
  *without* running timm's package ``__init__`` (``timm`` and ``timm.utils`` are registered as bare packages whose
  ``__path__`` is the installed folder), and give ``timm.utils.model`` the one torchvision name it imports,
  ``torchvision.ops.misc.FrozenBatchNorm2d`` — a placeholder class used there only in ``isinstance`` checks of the
  BN-freezing helpers, never on the saving path and never pickled. Everything that builds the file is timm's code.
  This runs in its own subprocess so the placeholder never leaks into another family.
* ``mmengine`` ``amp`` run — mmengine's ``AmpOptimWrapper`` asserts that CUDA/NPU/MLU/MUSA is available and
  creates ``torch.cuda.amp.GradScaler`` (disabled without CUDA, whose ``state_dict()`` is ``{}``). The run patches,
  for its duration only, that availability check and that module's ``GradScaler`` name to torch's device-generic
  ``torch.amp.GradScaler('cpu')`` (the base class of the CUDA one, same ``state_dict`` keys), with bf16 autocast.

The libraries live in their own environment, ``.venv-corpus`` (made by scripts/setup.sh: torch first, then
``-c constraints.txt``): transformers installed beside mmaction2 makes mmaction import its multimodal models, which
import timm, which imports torchvision. The main ``.venv`` never has them. :func:`ensure` runs the generator with
that interpreter (``$CKPT_CORPUS_PYTHON`` overrides it) from any other.

Deterministic: seeded models and data, fixed names; library-written timestamps differ between runs.
Usage: ``.venv-corpus/bin/python -m tests.support.genuine_corpus [--out DIR] [--only fam1,fam2] [--force]``;
``ensure()`` from Python (regenerates stale families only).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "fixtures" / "generated" / "genuine"

# family -> libraries whose versions go into the manifest (and the stamp)
FAMILIES = {
    "torch_dtypes": ("torch",),
    "torch_tensors": ("torch",),
    "torch_quantized": ("torch",),
    "torch_sparse": ("torch",),
    "torch_nested": ("torch",),
    "torch_legacy": ("torch",),
    "mmengine": ("mmengine", "torch"),
    "mmcv1": ("mmengine", "torch"),
    "torchvision_ref": ("torch",),
    "dcp": ("torch",),
    "lightning": ("lightning", "omegaconf", "torch"),
    "transformers": ("transformers", "safetensors", "torch"),
    "transformers4": ("transformers", "huggingface-hub", "torch"),
    "accelerate": ("accelerate", "torch"),
    "timm": ("timm", "torch"),
    "pickles": ("numpy", "torch"),
    "numpy2_pickles": ("numpy",),
}
# Families run in a subprocess: timm (placeholder torchvision module, see the module docstring) and transformers 4,
# whose pure-Python packages live in an overlay folder put first on sys.path (transformers 5 in .venv dropped
# `save_pretrained(safe_serialization=False)`; scripts/setup.sh installs the overlay).
# numpy2_pickles runs in the torch-free NumPy 2 environment scripts/setup.sh makes for tests/test_numpy2.py.
TF4_OVERLAY = REPO_ROOT / ".venv-tf4"
CORPUS_VENV = REPO_ROOT / ".venv-corpus"
ISOLATED = {"timm": None, "transformers4": TF4_OVERLAY, "numpy2_pickles": None}
NP2_PYTHON = REPO_ROOT / ".venv-np2" / "bin" / "python"


def _family_python(family: str) -> str:
    if family == "numpy2_pickles":
        exe = os.environ.get("CKPT_NP2_PYTHON") or str(NP2_PYTHON)
        if not Path(exe).exists():
            raise RuntimeError(f"{exe} does not exist: run scripts/setup.sh (it makes .venv-np2)")
        return exe
    return sys.executable


def _version(dist: str, family: str = "") -> str:
    overlay = ISOLATED.get(family)
    if overlay is not None:
        for d in importlib.metadata.distributions(name=dist, path=[str(overlay)]):
            return d.version
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


class _Family:
    """Collects the entries one family writes: path (relative to the corpus root), what wrote it, what it is."""

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.dir = root / name
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.entries = []

    def add(self, path, writer: str, note: str = "", **extra):
        path = Path(path)
        assert path.exists(), path
        self.entries.append(dict(family=self.name, path=str(path.relative_to(self.root)), writer=writer,
                                 note=note, **extra))


def _seed(n=0):
    import random

    import numpy as np

    random.seed(n)
    np.random.seed(n)
    try:
        import torch
    except ImportError:  # the NumPy 2 environment has no torch
        return
    torch.manual_seed(n)


def _tiny_net(seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def _train_steps(model, opt, steps=2, sched=None, scaler=None):
    import torch

    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=g)
        y = torch.randint(0, 3, (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()


# ------------------------------------------------------------------------------------------------------------
# plain torch.save
# ------------------------------------------------------------------------------------------------------------
ALL_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
              "uint32", "uint64", "bool", "complex32", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
              "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits1x8", "bits2x4",
              "bits4x2", "bits8", "bits16")
LEGACY_DTYPES = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
                 "complex64", "complex128")


def _dtype_tensor(name: str, n: int = 12, seed: int = 0):
    """A [3, n/3] tensor of `name` whose bytes are seeded random (every bit pattern, incl. NaN codes)."""
    import torch

    dt = getattr(torch, name)
    size = torch.empty(0, dtype=dt).element_size()
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
    if name == "bool":
        raw = raw % 2
    return raw.view(dt).reshape(3, n // 3)


def write_torch_dtypes(fam: _Family):
    import torch

    for name in ALL_DTYPES:
        t = _dtype_tensor(name, seed=len(name))
        p = fam.dir / f"{name}.pt"
        torch.save({"t": t, "t_T": t.t(), "row": t[1]}, p)
        fam.add(p, "torch.save", f"{name}: [3,4] tensor, its transpose (a strided view) and a row (offset view)")
    everything = {name: _dtype_tensor(name, seed=i) for i, name in enumerate(ALL_DTYPES)}
    p = fam.dir / "all_dtypes.pt"
    torch.save(everything, p)
    fam.add(p, "torch.save", "one tensor of every dtype torch 2.13 can save")


def write_torch_tensors(fam: _Family):
    import torch

    net = _tiny_net()
    p = fam.dir / "state_dict.pt"
    torch.save(net.state_dict(), p)
    fam.add(p, "torch.save(model.state_dict())", "OrderedDict with _metadata")
    p = fam.dir / "module_parameters.pt"
    w = torch.nn.Parameter(torch.randn(3, 4))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    shared = torch.arange(24, dtype=torch.float32)
    torch.save(dict(param=w, frozen=frozen, size=torch.Size([2, 3]), device=torch.device("cpu"),
                    dtype=torch.float16, empty=torch.empty(0, 5), scalar=torch.tensor(3.5), long_scalar=7 << 40,
                    views=[shared[2:10], shared.view(4, 6)[:, 1::2], shared.view(2, 3, 4).permute(2, 0, 1)],
                    expanded=torch.tensor([1.0, 2.0]).expand(3, 2),
                    channels_last=torch.randn(1, 2, 3, 3).to(memory_format=torch.channels_last),
                    param_list=list(net.parameters())[:2], nested={"a": [1, 2.5, None, True, "s", b"by"]}), p)
    fam.add(p, "torch.save", "Parameters (requires_grad on/off), Size, device, dtype, views, expand, channels_last")
    p = fam.dir / "meta.pt"
    # a model built on the meta device (big-model init), one meta tensor of every dtype, next to a real tensor
    with torch.device("meta"):
        meta_net = _tiny_net()
    meta = {f"net.{k}": v for k, v in meta_net.state_dict().items()}
    meta.update({f"dtype.{n}": torch.empty(2, 4, dtype=getattr(torch, n), device="meta") for n in ALL_DTYPES})
    torch.save({**meta, "w": torch.empty(4, 5, device="meta"), "real": torch.ones(2)}, p)
    fam.add(p, "torch.save", "meta tensors (no storage) of every dtype and a meta-device model, next to a real one")
    p = fam.dir / "protocol4.pt"
    torch.save(net.state_dict(), p, pickle_protocol=4)
    fam.add(p, "torch.save(pickle_protocol=4)", "zip format, protocol 4 pickle (STACK_GLOBAL, MEMOIZE)")
    p = fam.dir / "optimizer_adamw.pt"
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    _train_steps(net, opt, 2, sched)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": torch.get_rng_state()}, p)
    fam.add(p, "torch.save", "AdamW + OneCycleLR state dicts, torch RNG state")


def write_torch_quantized(fam: _Family):
    import torch

    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    out = {
        "quint8": torch.quantize_per_tensor(x, 0.05, 10, torch.quint8),
        "qint8": torch.quantize_per_tensor(x, 0.02, 0, torch.qint8),
        "qint32": torch.quantize_per_tensor(x, 0.001, 3, torch.qint32),
        "per_channel": torch.quantize_per_channel(x, torch.tensor([0.1, 0.05, 0.2, 0.01], dtype=torch.double),
                                                  torch.tensor([0, 1, -2, 3]), 0, torch.qint8),
        "per_channel_axis1": torch.quantize_per_channel(x, torch.linspace(0.01, 0.06, 6, dtype=torch.double),
                                                        torch.zeros(6, dtype=torch.long), 1, torch.quint8),
        "quint4x2": torch.quantize_per_tensor(x, 0.3, 2, torch.quint4x2),
        "quint2x4": torch.quantize_per_tensor(x, 0.6, 1, torch.quint2x4),
    }
    p = fam.dir / "qtensors.pt"
    torch.save(out, p)
    fam.add(p, "torch.save", "per-tensor quint8/qint8/qint32/quint4x2/quint2x4, per-channel qint8/quint8")
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    torch.manual_seed(0)
    qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    p = fam.dir / "dynamic_quantized_state_dict.pt"
    torch.save(qmodel.state_dict(), p)
    fam.add(p, "torch.ao.quantization.quantize_dynamic(...).state_dict()", "packed Linear params (qint8 weight)")


def write_torch_sparse(fam: _Family):
    import torch

    g = torch.Generator().manual_seed(5)
    dense = torch.randn(6, 8, generator=g) * (torch.rand(6, 8, generator=g) > 0.6)
    out = {
        "coo": dense.to_sparse(),
        "coo_uncoalesced": torch.sparse_coo_tensor(torch.tensor([[0, 1, 1], [2, 0, 2]]), torch.tensor([1., 2., 3.]),
                                                   (2, 3)),
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 2)),
        "bsc": dense.to_sparse_bsc((2, 2)),
        "coo_hybrid": torch.randn(4, 3, generator=g).to_sparse(1),
    }
    p = fam.dir / "sparse.pt"
    torch.save(out, p)
    fam.add(p, "torch.save", "sparse COO (coalesced, uncoalesced, hybrid), CSR, CSC, BSR, BSC")


def write_torch_nested(fam: _Family):
    import torch

    g = torch.Generator().manual_seed(6)
    parts = [torch.randn(2, 3, generator=g), torch.randn(4, 3, generator=g)]
    p = fam.dir / "nested_strided.pt"
    torch.save({"nt": torch.nested.nested_tensor(parts)}, p)
    fam.add(p, "torch.save", "nested tensor, strided layout")
    p = fam.dir / "nested_jagged.pt"
    torch.save({"nt": torch.nested.nested_tensor(parts, layout=torch.jagged)}, p)
    fam.add(p, "torch.save", "nested tensor, jagged layout (NJT subclass)")


def write_torch_legacy(fam: _Family):
    import torch

    net = _tiny_net(1)
    base = torch.arange(12, dtype=torch.float32)
    obj = {"state_dict": net.state_dict(), "epoch": 3, "big": 1 << 40, "name": "legacy",
           "dtypes": {n: _dtype_tensor(n, seed=i) for i, n in enumerate(LEGACY_DTYPES)},
           "view": base.view(3, 4)[:, 1:3], "shared": [base, base[4:]], "param": torch.nn.Parameter(torch.ones(2))}
    for proto in (2, 4):
        p = fam.dir / f"legacy_protocol{proto}.pt"
        torch.save(obj, p, _use_new_zipfile_serialization=False, pickle_protocol=proto)
        fam.add(p, f"torch.save(_use_new_zipfile_serialization=False, pickle_protocol={proto})",
                "legacy (pre-1.6) format: magic, protocol, sys info, object, storage keys, raw storages")


# ------------------------------------------------------------------------------------------------------------
# mmengine Runner (CheckpointHook, EMAHook, optim wrappers, param schedulers) and mmcv 1.x
# ------------------------------------------------------------------------------------------------------------
def _mmengine_cfg(work_dir, name, optim_wrapper, param_scheduler, custom_hooks, seed):
    return dict(
        custom_imports=dict(imports=["tests.support.toy_mmengine"], allow_failed_imports=False),
        model=dict(type="CkptToyClassifier"),
        work_dir=str(work_dir), experiment_name=name,
        train_dataloader=dict(batch_size=4, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=True),
                              collate_fn=dict(type="default_collate"),
                              dataset=dict(type="CkptToyDataset", num_samples=16, seed=0)),
        val_dataloader=dict(batch_size=8, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
                            collate_fn=dict(type="default_collate"),
                            dataset=dict(type="CkptToyDataset", num_samples=8, seed=1)),
        val_evaluator=dict(type="CkptToyAccuracy"), val_cfg=dict(),
        train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1),
        optim_wrapper=optim_wrapper, param_scheduler=param_scheduler,
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1, save_best="toy/accuracy",
                                           max_keep_ckpts=3),
                           logger=dict(type="LoggerHook", interval=1)),
        custom_hooks=custom_hooks, randomness=dict(seed=seed), log_level="WARNING",
        env_cfg=dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="gloo")),
        launcher="none",
    )


@contextlib.contextmanager
def _amp_on_cpu():
    """See the module docstring: let mmengine's real AmpOptimWrapper run on CPU with torch's CPU GradScaler."""
    import functools

    import torch
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp

    saved = amp.is_cuda_available, amp.GradScaler
    amp.is_cuda_available = lambda: True
    amp.GradScaler = functools.partial(torch.amp.GradScaler, "cpu")
    try:
        yield
    finally:
        amp.is_cuda_available, amp.GradScaler = saved


def write_mmengine(fam: _Family):
    from mmengine.config import Config
    from mmengine.runner import Runner

    from tests.support import toy_mmengine  # noqa: F401  registers the toy model/dataset/metric

    runs = {
        "sgd_multistep_ema": dict(
            optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.05, momentum=0.9,
                                                                   weight_decay=1e-4), clip_grad=dict(max_norm=5)),
            param_scheduler=[dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2),
                             dict(type="MultiStepLR", by_epoch=True, milestones=[1], gamma=0.1)],
            custom_hooks=[dict(type="EMAHook", momentum=0.01)]),
        "adamw_cosine_ema_annealing": dict(
            optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
                               paramwise_cfg=dict(norm_decay_mult=0.0)),
            param_scheduler=[dict(type="CosineAnnealingLR", by_epoch=True, T_max=2, eta_min=1e-5),
                             dict(type="CosineAnnealingMomentum", by_epoch=True, T_max=2, eta_min=0.8)],
            custom_hooks=[dict(type="EMAHook", ema_type="MomentumAnnealingEMA", momentum=0.0002, gamma=100)]),
        "amp_bf16_onecycle": dict(
            optim_wrapper=dict(type="AmpOptimWrapper", dtype="bfloat16", loss_scale="dynamic",
                               optimizer=dict(type="SGD", lr=0.02, momentum=0.9)),
            param_scheduler=[dict(type="OneCycleLR", eta_max=0.05, total_steps=8, by_epoch=False)],
            custom_hooks=[dict(type="EMAHook", ema_type="StochasticWeightAverage")]),
    }
    for i, (tag, spec) in enumerate(runs.items()):
        wd = fam.dir / tag
        cfg = _mmengine_cfg(wd, f"genuine_{tag}", seed=10 + i, **spec)
        ctx = _amp_on_cpu() if "amp" in tag else contextlib.nullcontext()
        with ctx:
            runner = Runner.from_cfg(Config(cfg))
            runner.train()
        for p in sorted(wd.glob("*.pth")):
            fam.add(p, "mmengine Runner + CheckpointHook", f"{tag}: {spec['optim_wrapper']['type']}, "
                    f"{', '.join(s['type'] for s in spec['param_scheduler'])}, {spec['custom_hooks'][0]}")


def write_mmcv1(fam: _Family):
    """mmcv 1.7 ``save_checkpoint(model, filename, optimizer, meta)`` as called by ``EpochBasedRunner``."""
    import time as _time

    import torch
    from mmengine.config import Config
    from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu

    net = _tiny_net(2)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    _train_steps(net, opt, 2)
    cfg = Config(dict(model=dict(type="Toy", depth=1), optimizer=dict(type="SGD", lr=0.02),
                      lr_config=dict(policy="step", step=[8, 11]), total_epochs=12))
    # EpochBasedRunner.save_checkpoint: meta.update(epoch=self.epoch + 1, iter=self.iter); the CheckpointHook adds
    # the runner's meta (env_info, config, seed, exp_name, hook_msgs) and mmcv_version/time/CLASSES are set by
    # save_checkpoint itself.
    meta = dict(env_info="sys.platform: linux\nPython: 3.11\nPyTorch: " + torch.__version__, config=cfg.pretty_text,
                seed=0, exp_name="toy_config.py", hook_msgs=dict(last_ckpt="work_dirs/toy/epoch_11.pth"),
                mmcv_version="1.7.2", time=_time.asctime(), CLASSES=("car", "pedestrian"),
                PALETTE=[(0, 0, 255), (255, 0, 0)], epoch=12, iter=480)
    ckpt = {"meta": meta, "state_dict": weights_to_cpu(get_state_dict(net)), "optimizer": opt.state_dict()}
    p = fam.dir / "epoch_12.pth"
    torch.save(ckpt, p)
    fam.add(p, "mmcv 1.x save_checkpoint layout (reproduced)", "meta + state_dict + optimizer")
    # multi-optimizer variant (mmcv 1.x: optimizer is a dict of state dicts, e.g. GANs)
    opt2 = torch.optim.Adam(net.parameters(), lr=1e-4)
    ckpt2 = {"meta": dict(meta, epoch=1, iter=40), "state_dict": weights_to_cpu(get_state_dict(net)),
             "optimizer": {"generator": opt.state_dict(), "discriminator": opt2.state_dict()}}
    p = fam.dir / "multi_optimizer.pth"
    torch.save(ckpt2, p)
    fam.add(p, "mmcv 1.x save_checkpoint layout (reproduced)", "optimizer is a dict of optimizers")


# ------------------------------------------------------------------------------------------------------------
# torchvision reference scripts (layout reproduced, see the module docstring) and torch.distributed.checkpoint
# ------------------------------------------------------------------------------------------------------------
def _torchvision_classification_args(argv):
    """The subset of references/classification/train.py's ``get_args_parser`` whose values end up in ``args``."""
    parser = argparse.ArgumentParser(description="PyTorch Classification Training", add_help=False)
    parser.add_argument("--data-path", default="/datasets01/imagenet_full_size/061417/", type=str)
    parser.add_argument("--model", default="resnet18", type=str)
    parser.add_argument("--device", default="cuda", type=str)
    parser.add_argument("-b", "--batch-size", default=32, type=int)
    parser.add_argument("--epochs", default=90, type=int)
    parser.add_argument("-j", "--workers", default=16, type=int)
    parser.add_argument("--opt", default="sgd", type=str)
    parser.add_argument("--lr", default=0.1, type=float)
    parser.add_argument("--momentum", default=0.9, type=float)
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay")
    parser.add_argument("--norm-weight-decay", default=None, type=float)
    parser.add_argument("--label-smoothing", default=0.0, type=float)
    parser.add_argument("--mixup-alpha", default=0.0, type=float)
    parser.add_argument("--lr-scheduler", default="steplr", type=str)
    parser.add_argument("--lr-warmup-epochs", default=0, type=int)
    parser.add_argument("--lr-step-size", default=30, type=int)
    parser.add_argument("--lr-gamma", default=0.1, type=float)
    parser.add_argument("--output-dir", default=".", type=str)
    parser.add_argument("--resume", default="", type=str)
    parser.add_argument("--start-epoch", default=0, type=int)
    parser.add_argument("--sync-bn", action="store_true")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--model-ema", action="store_true")
    parser.add_argument("--model-ema-steps", type=int, default=32)
    parser.add_argument("--model-ema-decay", type=float, default=0.99998)
    parser.add_argument("--world-size", default=1, type=int)
    parser.add_argument("--dist-url", default="env://", type=str)
    parser.add_argument("--val-resize-size", default=256, type=int)
    parser.add_argument("--ra-sampler", action="store_true")
    parser.add_argument("--weights", default=None, type=str)
    args = parser.parse_args(argv)
    args.distributed, args.gpu = False, 0  # set by utils.init_distributed_mode
    return args


def write_torchvision_ref(fam: _Family):
    import torch

    args = _torchvision_classification_args(["--model", "tiny", "--device", "cpu", "--amp", "--model-ema",
                                             "--epochs", "2", "--lr-scheduler", "steplr"])
    net = _tiny_net(4)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    main_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step_size, gamma=args.lr_gamma)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=1)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[warm, main_sched], milestones=[1])
    scaler = torch.amp.GradScaler("cpu")
    adjust = args.world_size * args.batch_size * args.model_ema_steps / args.epochs
    alpha = min(1.0, 1.0 - args.model_ema_decay) * adjust  # torchvision: alpha = 1 - decay, scaled
    decay = 1.0 - alpha

    def ema_avg(avg_param, param, num_averaged):
        return decay * avg_param + (1 - decay) * param

    ema = torch.optim.swa_utils.AveragedModel(net, avg_fn=ema_avg, use_buffers=True)
    _train_steps(net, opt, 2, sched, scaler)
    ema.update_parameters(net)
    for epoch in range(args.epochs):
        checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                      "epoch": epoch, "args": args, "model_ema": ema.state_dict(), "scaler": scaler.state_dict()}
        for name in (f"model_{epoch}.pth", "checkpoint.pth"):
            torch.save(checkpoint, fam.dir / name)  # utils.save_on_master
        fam.add(fam.dir / f"model_{epoch}.pth", "torchvision references/classification layout (reproduced)",
                "args Namespace, SequentialLR, model_ema (AveragedModel), GradScaler")
    fam.add(fam.dir / "checkpoint.pth", "torchvision references/classification layout (reproduced)", "latest")


def write_dcp(fam: _Family):
    import io

    import torch
    import torch.distributed.checkpoint as dcp

    net = _tiny_net(5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    _train_steps(net, opt, 2)
    state = {"model": net.state_dict(), "optim": opt.state_dict(), "step": 2, "extra": {"lr": 1e-3, "tag": "dcp"},
             "blob": io.BytesIO(b"opaque user bytes")}
    d = fam.dir / "checkpoint_step2"
    dcp.save(state, checkpoint_id=str(d), no_dist=True)
    fam.add(d, "torch.distributed.checkpoint.save(no_dist=True)", "model + Adam state + scalars + BytesIO")


# ------------------------------------------------------------------------------------------------------------
# Lightning, transformers, accelerate
# ------------------------------------------------------------------------------------------------------------
def write_lightning(fam: _Family):
    import logging
    import warnings

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    class Data(L.LightningDataModule):
        def __init__(self, batch_size=4, num_samples=16):
            super().__init__()
            self.save_hyperparameters()

        def _loader(self, seed):
            g = torch.Generator().manual_seed(seed)
            ds = torch.utils.data.TensorDataset(torch.randn(self.hparams.num_samples, 3, 8, 8, generator=g),
                                                torch.randint(0, 3, (self.hparams.num_samples,), generator=g))
            return torch.utils.data.DataLoader(ds, batch_size=self.hparams.batch_size)

        def train_dataloader(self):
            return self._loader(0)

        def val_dataloader(self):
            return self._loader(1)

    class Lit(L.LightningModule):
        def __init__(self, cfg=None, lr=0.01, **kwargs):
            super().__init__()
            if cfg is not None:
                self.save_hyperparameters(cfg)
            else:
                self.save_hyperparameters()
            self.net = _tiny_net(6)

        def training_step(self, batch, i):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=0.01)
            return [opt], [{"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "interval": "epoch"}]

    cfg = OmegaConf.create({"model": {"depth": 2, "widths": [4, 8], "name": "tiny", "dropout": 0.1},
                            "optim": {"lr": 0.01, "betas": [0.9, 0.999]}, "seed": 7, "big": 1 << 40,
                            "data": {"root": "${oc.env:HOME,/data}", "mean": [0.5, 0.5, 0.5]}, "flag": True,
                            "none": None})
    runs = {"omegaconf_hparams": lambda: Lit(cfg), "kwargs_hparams": lambda: Lit(None, lr=0.01, depth=2,
                                                                                 betas=(0.9, 0.999), name="tiny")}
    for tag, make in runs.items():
        wd = fam.dir / tag
        L.seed_everything(3, verbose=False)
        ckpt_cb = ModelCheckpoint(dirpath=wd, monitor="val_loss", save_last=True, save_top_k=2,
                                  filename="epoch{epoch}-val{val_loss:.3f}", auto_insert_metric_name=False)
        logger = CSVLogger(str(wd), name="logs") if tag == "kwargs_hparams" else False
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=logger, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(wd), log_every_n_steps=1,
                            callbacks=[ckpt_cb, EarlyStopping(monitor="val_loss", patience=3),
                                       LearningRateMonitor(logging_interval="epoch")] if tag == "kwargs_hparams"
                            else [ckpt_cb, EarlyStopping(monitor="val_loss", patience=3)])
        trainer.fit(make(), datamodule=Data())
        for p in sorted(wd.glob("*.ckpt")):
            fam.add(p, f"lightning {L.__version__} Trainer.fit + ModelCheckpoint", f"{tag}, EarlyStopping")


def _tiny_bert():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg)


def write_transformers(fam: _Family):
    import logging
    import warnings

    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    v = transformers.__version__
    model = _tiny_bert()
    d = fam.dir / "save_pretrained"
    model.save_pretrained(d)
    fam.add(d / "model.safetensors", f"transformers {v} save_pretrained", "single safetensors file")
    d = fam.dir / "save_pretrained_sharded"
    model.save_pretrained(d, max_shard_size="8KB")
    fam.add(d / "model.safetensors.index.json", f"transformers {v} save_pretrained(max_shard_size)",
            "sharded safetensors, index json")
    if "safe_serialization" in transformers.PreTrainedModel.save_pretrained.__code__.co_varnames:
        for tag, kw in (("save_pretrained_bin", {}), ("save_pretrained_bin_sharded", {"max_shard_size": "8KB"})):
            d = fam.dir / tag
            model.save_pretrained(d, safe_serialization=False, **kw)
            name = "pytorch_model.bin.index.json" if kw else "pytorch_model.bin"
            fam.add(d / name, f"transformers {v} save_pretrained(safe_serialization=False)", tag)
            for shard in sorted(d.glob("pytorch_model-*.bin")):
                fam.add(shard, f"transformers {v} save_pretrained(safe_serialization=False)", "one shard")

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randint(0, 64, (8, 6), generator=g)
            self.y = torch.randint(0, 3, (8,), generator=g)

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input_ids": self.x[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.y[i]}

    out = fam.dir / "trainer"
    args = TrainingArguments(output_dir=str(out), max_steps=2, save_steps=2, per_device_train_batch_size=4,
                             learning_rate=1e-3, warmup_steps=1, lr_scheduler_type="cosine", weight_decay=0.01,
                             use_cpu=True, report_to=[], logging_steps=1, seed=0,
                             disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=_tiny_bert(), args=args, train_dataset=DS()).train()
    ck = out / "checkpoint-2"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
        if (ck / name).exists():
            fam.add(ck / name, f"transformers {v} Trainer checkpoint folder", name)


def write_accelerate(fam: _Family):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(0)
    acc = Accelerator(cpu=True)
    net = _tiny_net(7)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
    dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)
    net, opt, dl, sched = acc.prepare(net, opt, dl, sched)
    for x, y in dl:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        acc.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
    d = fam.dir / "state"
    acc.save_state(str(d))
    for p in sorted(d.iterdir()):
        if p.is_file():
            fam.add(p, f"accelerate {_version('accelerate')} Accelerator.save_state", p.name)
    d2 = fam.dir / "state_bin"
    acc.save_state(str(d2), safe_serialization=False)
    for p in sorted(d2.glob("*.bin")):
        fam.add(p, f"accelerate {_version('accelerate')} Accelerator.save_state(safe_serialization=False)", p.name)


# ------------------------------------------------------------------------------------------------------------
# timm (own subprocess)
# ------------------------------------------------------------------------------------------------------------
def import_timm_saving_modules():
    """timm's checkpoint_saver / model_ema / model modules without timm's package __init__ (module docstring)."""
    import importlib.util
    import types

    import torch

    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise ImportError("timm is not installed (scripts/setup.sh installs it)")
    root = os.path.dirname(spec.origin)
    for name, sub in (("timm", root), ("timm.utils", os.path.join(root, "utils"))):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [sub]
            m.__file__ = os.path.join(sub, "__init__.py")
            sys.modules[name] = m
    if "torchvision" not in sys.modules:
        tv, ops, misc = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc"))
        tv.__path__, ops.__path__ = [], []

        class FrozenBatchNorm2d(torch.nn.Module):  # placeholder: isinstance checks only (see module docstring)
            pass

        misc.FrozenBatchNorm2d = FrozenBatchNorm2d
        tv.ops, ops.misc = ops, misc
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.misc": misc})
    import timm.layers as layers
    import timm.utils.checkpoint_saver as checkpoint_saver
    import timm.utils.model_ema as model_ema

    return checkpoint_saver, model_ema, layers


def write_timm(fam: _Family):
    import logging

    import torch

    checkpoint_saver, model_ema, layers = import_timm_saving_modules()
    logging.getLogger("timm").setLevel(logging.ERROR)

    class TinyTimmNet(torch.nn.Module):  # built from timm.layers blocks
        def __init__(self):
            super().__init__()
            self.stem = layers.ConvNormAct(3, 8, 3, act_layer="silu")
            self.se = layers.SqueezeExcite(8)
            self.head = layers.ClassifierHead(8, 3, pool_type="avg")

        def forward(self, x):
            return self.head(self.se(self.stem(x)))

    for tag, ema_cls in (("ema_v3", model_ema.ModelEmaV3), ("ema_v2", model_ema.ModelEmaV2)):
        torch.manual_seed(0)
        model = TinyTimmNet()
        ema = ema_cls(model, decay=0.99)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        args = argparse.Namespace(model="tiny_timm_net", lr=1e-3, opt="adamw", weight_decay=0.05, epochs=2,
                                  batch_size=4, sched="cosine", model_ema=True, model_ema_decay=0.99, amp=False,
                                  input_size=None, mean=None, std=None, drop_path=None, seed=42,
                                  output="", experiment="", smoothing=0.1, aa="rand-m9-mstd0.5-inc1",
                                  data_dir=Path("/data/imagenet"), img_size=8, crop_pct=0.875, channels_last=False)
        out = fam.dir / tag
        out.mkdir()
        saver = checkpoint_saver.CheckpointSaver(model=model, optimizer=opt, args=args, model_ema=ema,
                                                 checkpoint_dir=str(out), recovery_dir=str(out), decreasing=False,
                                                 max_history=2)
        for epoch in range(2):
            _train_steps(model, opt, 1)
            ema.update(model)
            saver.save_checkpoint(epoch, metric=50.0 + epoch)
        saver.save_recovery(2, batch_idx=3)
        for p in sorted(out.glob("*.pth.tar")):
            fam.add(p, f"timm {_version('timm')} CheckpointSaver", f"{tag}: args Namespace (with a PosixPath), "
                    "state_dict_ema, metric")


def write_transformers4(fam: _Family):
    import transformers

    if not transformers.__version__.startswith("4."):
        raise RuntimeError(f"transformers4 needs the overlay {TF4_OVERLAY} first on sys.path "
                           f"(got transformers {transformers.__version__}); run scripts/setup.sh")
    write_transformers(fam)


# ------------------------------------------------------------------------------------------------------------
# plain pickles: what mmengine.fileio.dump / mmaction2 --dump write (results with numpy arrays and torch tensors)
# ------------------------------------------------------------------------------------------------------------
def _results(with_torch: bool):
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        r = {"pred_score": rng.random(5, dtype=np.float32), "pred_label": np.int64(i % 5),
             "gt_label": np.array([i], dtype=np.int64), "keep": np.array([True, False]), "score": np.float64(0.5 + i),
             "img_shape": (8, 8), "dtype": np.dtype("float16"), "half": rng.random((2, 2)).astype(np.float16),
             "big": np.arange(4, dtype=np.uint64) << np.uint64(40), "name": f"clip_{i}"}
        if with_torch:
            import torch

            r["pred_score_t"] = torch.from_numpy(r["pred_score"].copy())
            r["bf16"] = torch.ones(3, dtype=torch.bfloat16) * i
        out.append(r)
    return out


def _write_pickles(fam: _Family, with_torch: bool, writer: str):
    import pickle

    results = _results(with_torch)
    for proto in (2, 4, 5):
        p = fam.dir / f"results_protocol{proto}.pkl"
        with open(p, "wb") as f:
            pickle.dump(results, f, protocol=proto)  # mmengine.fileio.dump(obj, 'x.pkl') does pickle.dump(protocol=2)
        # NumPy 2's protocol-5 pickles name numpy._core.numeric._frombuffer, which NumPy 1.26 (torch's environment
        # here) does not have: torch cannot be the reference for that one file
        extra = {} if with_torch or proto < 5 else {"torch_reference": False}
        fam.add(p, f"{writer} pickle.dump(protocol={proto})",
                "mmaction2 --dump style results: numpy arrays/scalars/dtype" + (", torch tensors" if with_torch else ""),
                **extra)


def write_pickles(fam: _Family):
    _write_pickles(fam, True, "numpy 1.26 + torch:")


def write_numpy2_pickles(fam: _Family):
    import numpy as np

    if not np.__version__.startswith("2."):
        raise RuntimeError(f"numpy2_pickles needs NumPy 2 (got {np.__version__}); run it with .venv-np2")
    _write_pickles(fam, False, "numpy 2:")


WRITERS = {name: globals()[f"write_{name}"] for name in FAMILIES}


# ------------------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------------------
def stamp_value(family: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update((REPO_ROOT / "tests" / "support" / "toy_mmengine.py").read_bytes())
    for dist in FAMILIES[family]:
        h.update(f"{dist}={_version(dist, family)}".encode())
    return f"{h.hexdigest()[:16]} {family}"


def stale(out_dir=DEFAULT_OUT, only=None) -> list:
    out_dir = Path(out_dir)
    return [f for f in (only or FAMILIES) if not ((out_dir / f / ".stamp").exists() and (out_dir / f / "manifest.json")
            .exists() and (out_dir / f / ".stamp").read_text() == stamp_value(f))]


def load_manifest(out_dir=DEFAULT_OUT) -> list:
    out_dir = Path(out_dir)
    entries = []
    for fam in FAMILIES:
        m = out_dir / fam / "manifest.json"
        if m.exists():
            entries += json.loads(m.read_text())["entries"]
    return entries


def _run_family(out_dir: Path, fam_name: str, log) -> None:
    t0 = time.time()
    fam = _Family(out_dir, fam_name)
    _seed(0)
    cwd = os.getcwd()
    os.chdir(fam.dir)  # libraries that write beside the cwd (lightning_logs, runs/) write inside the family
    try:
        WRITERS[fam_name](fam)
    finally:
        os.chdir(cwd)
    versions = {d: _version(d, fam_name) for d in FAMILIES[fam_name]}
    for e in fam.entries:
        e["versions"] = versions
    (fam.dir / "manifest.json").write_text(json.dumps({"family": fam_name, "versions": versions,
                                                       "entries": fam.entries}, indent=1))
    (fam.dir / ".stamp").write_text(stamp_value(fam_name))
    log(f"genuine corpus: {fam_name}: {len(fam.entries)} files in {time.time() - t0:.1f}s")


def generate(out_dir=DEFAULT_OUT, only=None, force=False, log=None) -> list:
    """Write the stale (or all, with ``force``) families into ``out_dir``; return the manifest entries."""
    log = log or (lambda m: print(m, file=sys.stderr))
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = list(only or FAMILIES) if force else stale(out_dir, only)
    inproc = [f for f in todo if f not in ISOLATED]
    for fam_name in inproc:
        _run_family(out_dir, fam_name, log)
    for fam_name in (f for f in todo if f in ISOLATED):
        path = [str(ISOLATED[fam_name])] if ISOLATED[fam_name] else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([_family_python(fam_name), "-m", "tests.support.genuine_corpus", "--out", str(out_dir),
                               "--only", fam_name, "--force", "--in-process"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"genuine corpus family {fam_name} failed:\n{proc.stdout}\n{proc.stderr}")
        log(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else fam_name)
    return load_manifest(out_dir)


def corpus_python() -> str:
    """The interpreter that has the corpus libraries (``$CKPT_CORPUS_PYTHON``, else ``.venv-corpus``)."""
    exe = os.environ.get("CKPT_CORPUS_PYTHON") or str(CORPUS_VENV / "bin" / "python")
    if not Path(exe).exists():
        raise RuntimeError(f"{exe} does not exist: run scripts/setup.sh (it makes .venv-corpus)")
    return exe


def corpus_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                PYTHONDONTWRITEBYTECODE="1")


def ensure(out_dir=DEFAULT_OUT, only=None, force=False) -> list:
    """Generate the stale (all, with ``force``) families with the corpus interpreter; return the manifest."""
    cmd = [corpus_python(), "-m", "tests.support.genuine_corpus", "--out", str(Path(out_dir).resolve())]
    if only:
        cmd += ["--only", ",".join(only)]
    if force:
        cmd.append("--force")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=corpus_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"genuine corpus generation failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr[-6000:]}")
    return load_manifest(out_dir)


def main(argv=None):
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--only", default="")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    only = [f for f in a.only.split(",") if f] or None
    unknown = set(only or ()) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown families: {', '.join(sorted(unknown))}")
    if a.in_process:
        for fam_name in only:
            _run_family(Path(a.out).resolve(), fam_name, lambda m: print(m, file=sys.stderr))
        return 0
    import fcntl

    Path(a.out).mkdir(parents=True, exist_ok=True)
    with open(Path(a.out) / ".lock", "w") as lock:  # two test runs at once: one generates, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = generate(a.out, only, a.force)
    print(f"{len(entries)} files in {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
