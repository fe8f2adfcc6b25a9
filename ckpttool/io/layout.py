"""Recognise how a checkpoint is laid out, and find its weights, meta and other sections.

Layouts: mmengine Runner (`meta`, `state_dict`, `optimizer`, `param_schedulers`, `message_hub`, `ema_state_dict`),
mmcv 1.x / BEVFusion torchpack (`meta` with `mmcv_version`/`config`), timm (`state_dict_ema`, `metric`, `arch`),
Lightning (`pytorch-lightning_version`, `optimizer_states`), `{'model': ...}`, a plain state dict, or unknown (then
the largest dict of tensors is taken as the weights).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ckpttool.errors import CkptError
from ckpttool.io.tensor import TensorRef
from ckpttool.io.unpickle import Inert
from ckpttool.plain import plain  # noqa: F401  (re-exported: meta values as plain data)

AUTO_PREFIXES = ("module.", "_orig_mod.")
MODEL_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "weights", "params")
META_KEYS_MMENGINE = ("epoch", "iter", "seed", "experiment_name", "mmengine_version", "time", "dataset_meta", "cfg")


@dataclass
class Layout:
    kind: str
    weights_key: str | None          # top-level key holding the weights; None = the root itself
    meta: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


class StateDict(OrderedDict):
    """key -> TensorRef, with the prefix that was stripped (if any) and the non-tensor entries set aside."""

    stripped_prefix: str | None = None
    extras: dict

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stripped_prefix, self.extras = None, {}

    @property
    def total_params(self) -> int:
        return sum(t.numel for t in self.values())

    def to_torch(self) -> "OrderedDict":
        """Materialise as torch tensors (imports torch)."""
        return OrderedDict((k, t.to_torch()) for k, t in self.items())


def is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and any(isinstance(v, TensorRef) for v in obj.values())


def count_tensors(obj, _depth=0) -> tuple[int, int]:
    """(number of tensors, bytes) anywhere inside obj."""
    if isinstance(obj, TensorRef):
        return 1, obj.nbytes
    if _depth > 50:
        return 0, 0
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    n = b = 0
    for v in items:
        dn, db = count_tensors(v, _depth + 1)
        n, b = n + dn, b + db
    return n, b


def recognise(root) -> Layout:
    if not isinstance(root, dict):
        what = f"<{root.qualname}>" if isinstance(root, Inert) else f"a {type(root).__name__}"
        return Layout("unknown", None, notes=[f"the file holds {what}, not a dict"])
    meta = root.get("meta") if isinstance(root.get("meta"), dict) else None
    if meta is not None and ("mmengine_version" in meta or "message_hub" in root or "param_schedulers" in root):
        return Layout("mmengine", _weights_key(root, "state_dict"), plain(meta))
    if meta is not None and ("mmcv_version" in meta or "config" in meta):
        return Layout("mmcv1", _weights_key(root, "state_dict"), plain(meta))
    if "pytorch-lightning_version" in root:
        keep = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters")
        return Layout("lightning", _weights_key(root, "state_dict"), plain({k: root[k] for k in keep if k in root}))
    if "state_dict" in root and ({"arch", "state_dict_ema", "metric", "model_ema"} & set(root)):
        keep = ("epoch", "arch", "metric", "version")
        return Layout("timm", _weights_key(root, "state_dict"), plain({k: root[k] for k in keep if k in root}))
    if all(isinstance(v, TensorRef) for v in root.values()) and root:
        return Layout("state-dict", None)
    for key in MODEL_KEYS:
        if is_tensor_dict(root.get(key)):
            kind = "model-dict" if key != "state_dict" else "wrapped"
            scalars = {k: v for k, v in root.items() if isinstance(v, (int, float, str)) and k != key}
            return Layout(kind, key, plain(meta if meta is not None else scalars))
    if is_tensor_dict(root) and sum(isinstance(v, TensorRef) for v in root.values()) >= len(root) / 2:
        return Layout("state-dict", None)
    best = max((k for k in root if is_tensor_dict(root[k])), key=lambda k: count_tensors(root[k])[0], default=None)
    return Layout("unknown", best, plain(meta or {}),
                  notes=[f"weights guessed as the largest tensor dict {best!r}"] if best else [])


def _weights_key(root, key):
    return key if key in root else None


def state_dict_of(root, layout: Layout, section: str | None = None) -> StateDict:
    """The weights (or another section, e.g. 'ema_state_dict', 'optimizer') as a flat StateDict."""
    key = layout.weights_key if section is None else section
    if key is None:
        obj = root
    else:
        if not isinstance(root, dict) or key not in root:
            have = ", ".join(sorted(map(str, root))) if isinstance(root, dict) else type(root).__name__
            raise CkptError(f"no section {key!r} in this checkpoint (sections: {have})")
        obj = root[key]
    sd = StateDict()
    _flatten(obj, "", sd)
    if not sd:
        raise CkptError(f"section {key or '(root)'!r} holds no tensors")
    if layout.kind == "mmengine" and section == "ema_state_dict" and "steps" in sd:
        sd.extras["steps"] = sd.pop("steps")   # mmengine's ExponentialMovingAverage counter, not a model tensor
    strip_auto_prefixes(sd)
    return sd


def _flatten(obj, prefix: str, out: StateDict, depth: int = 0):
    if depth > 64:
        raise CkptError("nesting too deep")
    if isinstance(obj, TensorRef):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (TensorRef, dict, list, tuple)):
                _flatten(v, f"{prefix}{k}.", out, depth + 1)
            else:
                out.extras[f"{prefix}{k}"] = v
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}{i}.", out, depth + 1)


def strip_auto_prefixes(sd: StateDict) -> None:
    """Strip DDP `module.` / torch.compile `_orig_mod.` only when every key has it (at most a few rounds: a key of
    'module.' repeated 300,000 times must not make this quadratic)."""
    stripped = ""
    changed, rounds = True, 0
    while changed and sd and rounds < 4:
        rounds += 1
        changed = False
        for p in AUTO_PREFIXES:
            if all(k.startswith(p) for k in sd):
                items = [(k[len(p):], v) for k, v in sd.items()]
                sd.clear()
                sd.update(items)
                stripped += p
                changed = True
    sd.stripped_prefix = stripped or None
