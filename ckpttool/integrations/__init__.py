"""The only place that imports OpenMMLab model libraries (mmengine models, mmaction2).

Everything here imports its heavy dependencies inside functions, so importing this package is cheap.
"""
from __future__ import annotations

__all__ = ["openmmlab", "mmaction"]
