"""Generate a large, realistic mmengine training checkpoint: full-size key layout, Adam moments, HistoryBuffers."""
from __future__ import annotations

import os
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "fixtures", "keys")


def read_layout(name: str):
    out = []
    with open(os.path.join(KEYS, f"{name}.txt")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            shape = [int(s) for s in parts[1].strip("[]").split(",") if s.strip()]
            dtype = parts[2] if len(parts) > 2 else "float32"
            out.append((parts[0], shape, dtype))
    return out


def make_training_checkpoint(path: str, layout: str = "kaist_cascade", adam: bool = True, seed: int = 0) -> int:
    """torch.save an mmengine-Runner-shaped checkpoint of the full-size `layout`; returns the file size."""
    import torch
    from mmengine.logging import HistoryBuffer

    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape, dtype in read_layout(layout):
        dt = getattr(torch, dtype)
        sd[key] = (torch.randn(shape, generator=g) * 0.02).to(dt) if dt.is_floating_point else \
            torch.zeros(shape, dtype=dt)
    params = [k for k, t in sd.items() if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))]
    state = {}
    if adam:
        for i, k in enumerate(params):
            state[i] = {"step": torch.tensor(100.0), "exp_avg": torch.zeros_like(sd[k]),
                        "exp_avg_sq": torch.full_like(sd[k], 1e-6)}
    hub = {"log_scalars": {}, "runtime_info": {"epoch": 5, "iter": 5000}, "resumed_keys": {}}
    for name in ("train/loss", "train/lr", "val/acc/top1"):
        buf = HistoryBuffer()
        for v in (0.5, 0.4, 0.3):
            buf.update(v)
        hub["log_scalars"][name] = buf
    ckpt = {
        "meta": {"epoch": 5, "iter": 5000, "cfg": "model = dict(type='TwoStreamCascade')\n", "seed": 42,
                 "experiment_name": "bench", "mmengine_version": "0.10.7", "time": "20261121_120000"},
        "state_dict": sd,
        "optimizer": {"state": state, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                                        "weight_decay": 0.05, "amsgrad": False,
                                                        "params": list(range(len(params)))}]},
        "param_schedulers": [{"milestones": {8: 1, 11: 1}, "gamma": 0.1, "by_epoch": True, "last_step": 5,
                              "base_values": [1e-4], "_last_value": [1e-4]}],
        "message_hub": hub,
    }
    torch.save(ckpt, path)
    return os.path.getsize(path)
