"""torch.distributed for ``--launcher pytorch`` (gloo on CPU, nccl on CUDA): rank, world size, gather, barrier."""
from __future__ import annotations

import os

from ckpttool.errors import CkptError

LAUNCHERS = ("none", "pytorch")


class Dist:
    """A context manager: initialises the process group under torchrun (and destroys what it created)."""

    def __init__(self, launcher: str = "none", device: str = "cpu"):
        if launcher not in LAUNCHERS:
            raise CkptError(f"--launcher must be none or pytorch, got {launcher!r}")
        if launcher == "pytorch" and "RANK" not in os.environ:
            raise CkptError("--launcher pytorch needs torchrun (RANK/WORLD_SIZE are not set)")
        self.launcher, self.device, self.created = launcher, device, False
        self.rank, self.world = 0, 1

    def __enter__(self) -> "Dist":
        if self.launcher == "pytorch":
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                if self.device.startswith("cuda"):
                    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
                dist.init_process_group("nccl" if self.device.startswith("cuda") else "gloo")
                self.created = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        return self

    def __exit__(self, *exc) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()

    def shard(self, n: int) -> list[int]:
        """This rank's sample indices of ``0..n-1`` (as mmengine's ``DefaultSampler(shuffle=False, round_up=False)``)."""
        return list(range(self.rank, n, self.world))

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
