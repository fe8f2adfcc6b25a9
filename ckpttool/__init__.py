"""ckpt: safe tools for PyTorch / OpenMMLab checkpoints."""
__version__ = "0.1.0"
