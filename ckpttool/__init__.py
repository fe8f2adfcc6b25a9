"""ckpt: safe tools for PyTorch / OpenMMLab checkpoints."""
__version__ = "0.1.0"


def __getattr__(name):
    # `ckpttool.graft(...)` without making `import ckpttool` import torch or the surgery modules
    if name == "graft":
        from ckpttool.surgery.graft import graft

        return graft
    raise AttributeError(f"module 'ckpttool' has no attribute {name!r}")
