"""Data-parallel training through `torchrun`: one process per GPU (or CPU process with gloo)."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def share_of(self, batch_size: int) -> int:
        """This rank's part of the global batch (the first ranks take the remainder)."""
        return batch_size // self.world_size + (1 if self.rank < batch_size % self.world_size else 0)


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun set up, if any (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
