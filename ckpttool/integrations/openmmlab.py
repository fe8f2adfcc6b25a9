"""mmengine configs and models: load a config with ``--cfg-options``, build its model, load weights safely."""
from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ckpttool.errors import CkptError


def parse_cfg_value(text: str) -> Any:
    """A ``--cfg-options`` value as mmengine's ``DictAction`` reads it: a Python literal (``8``, ``(1, 1)``,
    ``'x'``, ``None``, ``[1, 2]``, ``{..}``), else ``a,b`` -> list, ``[a,b]``/``(a,b)`` -> list/tuple (nested),
    ``true``/``false``/``none`` (any case) -> True/False/None, else the string itself."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return _parse_iterable(text)


_CLOSE = {"[": "]", "(": ")"}


def _parse_iterable(text: str) -> Any:
    text = text.strip()
    if text[:1] in _CLOSE and text[-1:] == _CLOSE[text[0]]:
        values = [_parse_iterable(p) for p in _split_top(text[1:-1]) if p.strip()]
        return values if text[0] == "[" else tuple(values)
    parts = _split_top(text)
    if len(parts) > 1:
        return [_parse_iterable(p) for p in parts if p.strip()]
    return _scalar(text)


def _split_top(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _scalar(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


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


def load_config(path, cfg_options: list[str] | dict | None = None, project_root=None):
    """``mmengine.Config.fromfile(path)`` (``_base_`` resolved, ``custom_imports`` imported with the current
    directory and ``project_root`` on ``sys.path``, as ``tools/test.py`` run from a project finds them) with
    ``cfg_options`` merged in."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise CkptError(f"config not found: {path}")
    try:
        with import_paths(project_root):
            cfg = Config.fromfile(str(path))
    except Exception as exc:  # syntax errors, missing _base_ files, custom imports that fail, …
        hint = (" (custom_imports are imported from the current directory: run from the project folder, or pass "
                "--project-root DIR / set PYTHONPATH)" if isinstance(exc, ImportError) else "")
        # mmengine wraps a failed custom import in an ImportError listing sys.path line by line: say the original
        inner = exc.__cause__ or exc.__context__
        shown = inner if isinstance(exc, ImportError) and isinstance(inner, ImportError) else exc
        text = str(shown).strip().splitlines()[0] if str(shown).strip() else type(shown).__name__
        raise CkptError(f"cannot read config {path}: {text}{hint}") from exc
    options = parse_cfg_options(cfg_options)
    if options:
        try:
            cfg.merge_from_dict(options)
        except Exception as exc:
            raise CkptError(f"cannot apply --cfg-options to {path}: {exc}") from exc
    return cfg


@contextlib.contextmanager
def import_paths(project_root=None):
    """The current directory and ``project_root`` at the front of ``sys.path`` for the block (what is
    imported meanwhile stays imported)."""
    roots = [str(Path(p).resolve()) for p in (project_root, os.getcwd()) if p]
    if project_root and not Path(project_root).is_dir():
        raise CkptError(f"--project-root {project_root}: not a directory")
    added = [r for r in roots if r not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for r in added:
            if r in sys.path:
                sys.path.remove(r)


def read_config_file(path) -> dict:
    """A config file named by the user (.py/.json/.yaml) as plain data, without importing ``custom_imports``."""
    if not os.path.isfile(path):
        raise CkptError(f"{path}: no such config file")
    try:
        from mmengine.config import Config
    except ImportError:
        raise CkptError("reading a config file needs mmengine (pip install mmengine)") from None
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception as exc:  # mmengine raises many kinds for a bad file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CkptError(f"{path}: cannot read config ({msg})") from None
    return cfg.to_dict()


def inner_dataset(dataset_cfg):
    """The innermost dataset config (the one with the ``pipeline``), looking through wrappers
    (``RepeatDataset``, ``ConcatDataset``-like ``dataset=`` nesting)."""
    node = dataset_cfg
    while isinstance(node, Mapping) and "pipeline" not in node and isinstance(node.get("dataset"), Mapping):
        node = node["dataset"]
    return node


def test_dataset_cfg(cfg, split=None):
    """A deep copy of ``cfg.test_dataloader.dataset`` with ``split`` set on its inner dataset."""
    import copy

    if "test_dataloader" not in cfg or not cfg.test_dataloader or "dataset" not in cfg.test_dataloader:
        raise CkptError("the config has no test_dataloader.dataset")
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    if split is not None:
        inner_dataset(dataset_cfg)["split"] = split
    return dataset_cfg


def build_dataset(dataset_cfg):
    """The dataset of ``dataset_cfg`` with an empty pipeline (adapters build their own per view key), fully
    initialised; CkptError naming what failed."""
    import copy

    from mmengine.registry import DATASETS

    cfg = copy.deepcopy(dataset_cfg)
    inner_dataset(cfg)["pipeline"] = []
    try:
        with quiet_mmengine_logs():
            dataset = DATASETS.build(cfg)
            if hasattr(dataset, "full_init"):
                dataset.full_init()
    except CkptError:
        raise
    except Exception as exc:
        raise CkptError(f"cannot build the test dataset: {type(exc).__name__}: {exc}{_split_hint(cfg, exc)}") from exc
    return dataset


def _split_hint(dataset_cfg, exc) -> str:
    """For a KeyError on `split` (mmaction2 pose annotations), the splits the annotation file has."""
    inner = inner_dataset(dataset_cfg)
    split, ann = inner.get("split"), inner.get("ann_file")
    if not isinstance(exc, KeyError) or not split or not isinstance(ann, str) or not os.path.isfile(ann):
        return ""
    try:
        from ckpttool.io import load_pickle

        splits = load_pickle(ann).get("split")
    except Exception:  # the hint is best effort; the error above stands either way
        return ""
    return f" (split {split!r}; the annotation file has: {', '.join(map(str, splits))})" if isinstance(splits, dict) \
        else ""


def import_scope(scope: str | None) -> None:
    """Import the registries of ``scope`` (``cfg.default_scope``, once per process) and make it mmengine's
    default scope."""
    from mmengine.registry import init_default_scope

    if scope:
        _import_registries(scope)
        init_default_scope(scope)


@lru_cache(maxsize=None)
def _import_registries(scope: str) -> None:
    import importlib

    if scope == "mmaction":
        from ckpttool.integrations.mmaction import import_mmaction

        import_mmaction()
        return
    for name in (f"{scope}.registry", f"{scope}.models"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if name.endswith(".registry"):
                raise CkptError(f"cannot import the {scope!r} registry (default_scope of the config): {exc}") from exc


@contextlib.contextmanager
def quiet_mmengine_logs(level: int = logging.WARNING):
    """For the block: mmengine's current logger at ``level`` at least (init_weights logs every parameter at INFO),
    and its console handlers on stderr (mmengine writes to stdout, where ``--format json`` prints its one
    object)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    old_level = logger.level
    moved = [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout]
    logger.setLevel(max(level, old_level))
    for h in moved:
        h.setStream(sys.stderr)
    try:
        yield logger
    finally:
        logger.setLevel(old_level)
        for h in moved:
            h.setStream(sys.stdout)


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


def build_model(cfg, device: str | None = "cpu", init: bool = True):
    """Build ``cfg.model`` through the registry of ``cfg.default_scope``, call ``init_weights()`` (unless not
    ``init``), move to ``device`` (unless None) and return it in eval mode."""
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
    if init:
        init_weights(model)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def init_weights(model) -> None:
    """mmengine models start from ``init_weights()`` (logs quieted); a plain nn.Module is initialised by its
    constructor."""
    try:
        from mmengine.model import BaseModule
    except ImportError:
        return
    if isinstance(model, BaseModule) and not getattr(model, "is_init", False):
        with quiet_mmengine_logs():
            model.init_weights()


def recalibrate_bn(model, cfg, batches: int, config="the config", progress: bool | None = None) -> int:
    """Run up to ``batches`` batches of ``cfg.train_dataloader`` (built as mmengine's Runner builds it, seeded by
    ``cfg.randomness.seed``) through ``model`` in train mode without gradients, so that BatchNorm layers
    accumulate their statistics. Returns the number of batches run. ``progress``: a bar of the batches."""
    import torch
    from mmengine.runner import Runner

    from ckpttool.report.progress import bar

    seed = (cfg.get("randomness") or {}).get("seed")
    try:
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
    except Exception as exc:
        raise CkptError(f"cannot build train_dataloader of {config}: {type(exc).__name__}: {exc}") from exc
    model.train()
    seen = 0
    total = min(batches, len(loader)) if hasattr(loader, "__len__") else batches
    device = next(iter(model.parameters()), torch.empty(0)).device
    with torch.no_grad(), bar(total, f"recalibrating BatchNorm on {device.type}", " batches", progress) as ticks:
        for data in loader:
            if seen >= batches:
                break
            data = model.data_preprocessor(data, True)
            if isinstance(data, dict):
                model(**data, mode="tensor")
            else:
                model(*data, mode="tensor")
            seen += 1
            ticks.update(1)
    return seen


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
