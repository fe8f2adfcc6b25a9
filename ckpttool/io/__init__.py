"""Reading and writing checkpoints safely.

`load(path)` opens torch zip / legacy files, plain pickles, safetensors (single or sharded) and
torch.distributed.checkpoint folders without executing anything stored in them. See docs/architecture.md.

The names below are imported on first use (PEP 562), so that a light module of this package (`hashing`,
`dtypes`, `write`) does not import the whole reader.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Checkpoint": "checkpoint", "load": "checkpoint", "load_pickle": "checkpoint",
            "StateDict": "layout", "TensorRef": "tensor"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
