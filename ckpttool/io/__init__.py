"""Reading and writing checkpoints safely.

`load(path)` opens torch zip / legacy files, plain pickles, safetensors (single or sharded) and
torch.distributed.checkpoint folders without executing anything stored in them. See docs/architecture.md.
"""
from ckpttool.io.checkpoint import Checkpoint, load, load_pickle
from ckpttool.io.layout import StateDict
from ckpttool.io.tensor import TensorRef

__all__ = ["Checkpoint", "StateDict", "TensorRef", "load", "load_pickle"]
