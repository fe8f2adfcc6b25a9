"""Training state kept in a checkpoint: optimizer, LR schedulers, last logged scalars, EMA."""
from __future__ import annotations

from ckpttool.io.layout import count_tensors, plain
from ckpttool.io.tensor import TensorRef
from ckpttool.io.unpickle import Inert

_STATE_KINDS = [  # (state keys that identify the optimizer, name)
    ({"exp_avg", "exp_avg_sq"}, "Adam/AdamW"),
    ({"momentum_buffer"}, "SGD (momentum)"),
    ({"square_avg", "acc_delta"}, "Adadelta"),
    ({"square_avg"}, "RMSprop"),
    ({"sum"}, "Adagrad"),
    ({"exp_inf"}, "Adamax"),
    ({"mu_product"}, "NAdam"),
    ({"exp_avg"}, "Lion-like (exp_avg only)"),
]
_GROUP_FIELDS = ("lr", "initial_lr", "weight_decay", "momentum", "betas", "eps", "nesterov", "decoupled_weight_decay")


def optimizer_summary(opt) -> dict | None:
    """Kind (from its state), param groups' lr / weight decay / momentum / betas, state size."""
    if isinstance(opt, list) and opt:            # Lightning: optimizer_states
        opt = opt[0]
    if not isinstance(opt, dict):
        return None
    if "param_groups" not in opt:                # mmengine OptimWrapperDict: {name: optimizer state}
        inner = [v for v in opt.values() if isinstance(v, dict) and "param_groups" in v]
        if not inner:
            return None
        opt = inner[0]
    groups = opt.get("param_groups") or []
    state = opt.get("state") or {}
    keys = set()
    for s in state.values() if isinstance(state, dict) else ():
        if isinstance(s, dict):
            keys |= set(s)
    kind = next((name for need, name in _STATE_KINDS if need <= keys), None)
    if kind is None:
        kind = "SGD" if groups and isinstance(groups[0], dict) and "momentum" in groups[0] else "unknown"
    if kind == "Adam/AdamW" and groups and isinstance(groups[0], dict) and "decoupled_weight_decay" in groups[0]:
        kind = "AdamW" if groups[0]["decoupled_weight_decay"] else "Adam"
    n, b = count_tensors(state)
    rows = []
    for g in groups if isinstance(groups, list) else ():
        if isinstance(g, dict):
            row = {k: plain(g[k]) for k in _GROUP_FIELDS if k in g}
            row["params"] = len(g.get("params") or [])
            rows.append(row)
    return {"kind": kind, "param_groups": rows, "group_sets": group_sets(rows, groups), "state_tensors": n,
            "state_bytes": b, "state_keys": sorted(keys),
            "lr_note": "stored after the end-of-epoch scheduler step: the next epoch's lr"}


def group_sets(rows: list[dict], groups) -> list[dict]:
    """Param groups with equal settings as one entry (`paramwise_cfg` makes one group per parameter): the group
    indices, their parameter count and the parameter indices they hold (positions in the model's parameter order)."""
    sets: dict[tuple, dict] = {}
    for i, row in enumerate(rows):
        key = tuple(sorted((k, repr(v)) for k, v in row.items() if k != "params"))
        entry = sets.setdefault(key, {**{k: v for k, v in row.items() if k != "params"}, "groups": [], "params": 0,
                                      "param_ids": []})
        entry["groups"].append(i)
        entry["params"] += row["params"]
        g = groups[i] if isinstance(groups, list) and i < len(groups) and isinstance(groups[i], dict) else {}
        entry["param_ids"] += [p for p in g.get("params") or [] if isinstance(p, int)]
    return list(sets.values())


def name_groups(group_sets_: list[dict], param_names: list[str]) -> None:
    """Add `names` (the first few parameter names) to each set: optimizer param ids are positions in the
    parameter order, which is the state dict's order without buffers."""
    for s in group_sets_:
        names = [param_names[i] for i in s["param_ids"] if 0 <= i < len(param_names)]
        s["names"] = names


_SCHED_HINTS = [("milestones", "MultiStepLR"), ("T_max", "CosineAnnealing"), ("start_factor", "LinearLR"),
                ("step_size", "StepLR"), ("power", "PolyLR"), ("gamma", "ExponentialLR")]
_SCHED_FIELDS = ("by_epoch", "begin", "end", "last_step", "milestones", "gamma", "T_max", "eta_min",
                 "start_factor", "end_factor", "step_size", "power", "base_values", "_last_value")


def schedulers_summary(scheds) -> list[dict]:
    if isinstance(scheds, dict):
        scheds = [scheds]
    out = []
    for s in scheds if isinstance(scheds, list) else ():
        if not isinstance(s, dict):
            continue
        kind = next((name for key, name in _SCHED_HINTS if key in s), "scheduler")
        row = {"kind": kind}
        row.update({k.lstrip("_"): plain(s[k]) for k in _SCHED_FIELDS if k in s})
        out.append(row)
    return out


def last_scalars(hub) -> dict:
    """mmengine MessageHub state: the last value of every logged scalar, plus runtime info (epoch, iter…)."""
    if not isinstance(hub, dict):
        return {}
    out = {}
    for name, buf in (hub.get("log_scalars") or {}).items():
        state = buf.state if isinstance(buf, Inert) else getattr(buf, "__dict__", buf)  # inert, or real (--trust)
        hist = state.get("_log_history") if isinstance(state, dict) else None
        try:
            if hist is not None and len(hist):
                out[str(name)] = float(hist[-1])
        except (TypeError, ValueError):
            continue
    info = hub.get("runtime_info") or {}
    for key in ("epoch", "iter", "max_epochs", "max_iters"):
        if key in info and isinstance(plain(info[key]), (int, float)):
            out.setdefault(f"runtime/{key}", plain(info[key]))
    return out


def ema_summary(root, layout_kind: str) -> dict | None:
    if not isinstance(root, dict):
        return None
    if "ema_state_dict" in root:
        steps = root["ema_state_dict"].get("steps") if isinstance(root["ema_state_dict"], dict) else None
        note = ("mmengine EMAHook: `state_dict` holds the EMA weights, `ema_state_dict` the raw ones "
                "(prefix `module.`)") if layout_kind == "mmengine" else None
        return {"section": "ema_state_dict", "steps": plain(steps) if isinstance(steps, TensorRef) else steps,
                "note": note}
    for key in ("state_dict_ema", "model_ema", "ema"):
        if key in root and count_tensors(root[key])[0]:
            return {"section": key, "steps": None, "note": None}
    return None
