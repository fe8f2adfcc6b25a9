"""mmengine configs and models: load a config with ``--cfg-options``, build its model, load weights safely."""
from __future__ import annotations

import ast
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpttool.errors import CkptError


def parse_cfg_value(text: str) -> Any:
    """A ``--cfg-options`` value: a Python literal (``8``, ``(1, 1)``, ``'x'``, ``None``, ``[1, 2]``, ``{..}``),
    else what mmengine's DictAction makes of it (``a,b`` -> list, ``true`` -> True), else the string itself."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    from mmengine.config import DictAction

    return DictAction._parse_iterable(text)


def parse_cfg_options(options) -> dict:
    """``["a.b=1", "c=[1,2]"]`` (or a dict, or None) -> ``{"a.b": 1, "c": [1, 2]}``."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    if isinstance(options, str):
        options = [options]
    out: dict = {}
    for item in options:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise CkptError(f"--cfg-options expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_cfg_value(value)
    return out


def load_config(path, cfg_options: list[str] | dict | None = None):
    """``mmengine.Config.fromfile(path)`` (``_base_`` resolved) with ``cfg_options`` merged in."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise CkptError(f"config not found: {path}")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # syntax errors, missing _base_ files, …
        raise CkptError(f"cannot read config {path}: {exc}") from exc
    options = parse_cfg_options(cfg_options)
    if options:
        try:
            cfg.merge_from_dict(options)
        except Exception as exc:
            raise CkptError(f"cannot apply --cfg-options to {path}: {exc}") from exc
    return cfg


def import_scope(scope: str | None) -> None:
    """Import the registries of ``scope`` (``cfg.default_scope``) and make it mmengine's default scope."""
    import importlib

    from mmengine.registry import init_default_scope

    if scope == "mmaction":
        from ckpttool.integrations.mmaction import import_mmaction

        import_mmaction()
    elif scope:
        for name in (f"{scope}.registry", f"{scope}.models"):
            try:
                importlib.import_module(name)
            except ImportError as exc:
                if name.endswith(".registry"):
                    raise CkptError(f"cannot import the {scope!r} registry (default_scope of the config): {exc}") from exc
    if scope:
        init_default_scope(scope)


@contextlib.contextmanager
def quiet_mmengine_logs(level: int = logging.WARNING):
    """Raise mmengine's current logger to ``level`` for the block (init_weights logs every parameter at INFO)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.setLevel(old)


def resolve_device(device: str | None = None) -> str:
    """The device a model run uses: ``None``/``"auto"`` is ``"cuda"`` when torch sees a GPU, else ``"cpu"``;
    ``"cuda"``/``"cuda:N"`` without such a GPU is one clear CkptError (not an AssertionError from torch)."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            why = "a CPU-only build" if torch.version.cuda is None else "no GPU visible (CUDA_VISIBLE_DEVICES?)"
            raise CkptError(f"--device {device}: torch {torch.__version__} sees no CUDA device ({why}); "
                            "use --device cpu")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise CkptError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise CkptError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def build_model(cfg, device: str = "cpu"):
    """Build ``cfg.model`` through the registry of ``cfg.default_scope``, call ``init_weights()``, move to
    ``device`` and return it in eval mode."""
    from mmengine.registry import MODELS

    if "model" not in cfg:
        raise CkptError("the config has no `model` section")
    import_scope(cfg.get("default_scope"))
    try:
        model = MODELS.build(cfg.model)
    except CkptError:
        raise
    except Exception as exc:
        raise CkptError(f"cannot build the model of the config: {type(exc).__name__}: {exc}") from exc
    if hasattr(model, "init_weights"):
        with quiet_mmengine_logs():
            model.init_weights()
    model.to(device)
    model.eval()
    return model


def _as_tensor(value):
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "to_torch"):
        return value.to_torch()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    raise CkptError(f"not a tensor: {type(value).__name__}")


def load_state_dict_into(model, state_dict_mapping: Mapping, strict: bool = True) -> dict:
    """Copy ``state_dict_mapping`` (our reader's StateDict of TensorRefs, or tensors/ndarrays) into ``model``.

    Returns ``{"missing": [...], "unexpected": [...], "loaded": n}``. With ``strict`` any missing/unexpected key
    or shape mismatch raises CkptError naming the first few; without it, mismatching shapes are still refused.
    """
    own = model.state_dict()
    tensors = {}
    mismatched = []
    for key, value in state_dict_mapping.items():
        tensor = _as_tensor(value)
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(own[key].shape)}")
            continue
        tensors[key] = tensor
    missing = [k for k in own if k not in state_dict_mapping]
    unexpected = [k for k in state_dict_mapping if k not in own]
    if mismatched:
        raise CkptError(f"{len(mismatched)} shape mismatch(es) between checkpoint and model, e.g. "
                        + "; ".join(mismatched[:3]))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
        raise CkptError("checkpoint does not match the model: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=False)
    return {"missing": missing, "unexpected": unexpected, "loaded": len(tensors)}


def read_state_dict(checkpoint, section: str | None = None):
    """The weights of ``checkpoint`` through our reader (``ckpttool.io.load``): no code from the file runs."""
    from ckpttool.io import load

    ck = load(checkpoint)
    ck.require_safe()
    return ck.state_dict(section) if section else ck.state_dict()


def load_checkpoint(model, checkpoint, strict: bool = True, section: str | None = None) -> dict:
    """``mmengine.runner.load_checkpoint`` replacement that reads through our safe reader (mmengine's own loader
    fails on torch >= 2.6 and would execute code from the file)."""
    return load_state_dict_into(model, read_state_dict(checkpoint, section), strict=strict)
