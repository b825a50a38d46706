"""Memory of one training step, estimated without allocating it, and the memory a machine has.

The forward pass runs on PyTorch's `meta` device (shapes only, no data, no time) and the
tensors autograd saves for backward are added up: that is the activation memory. Weights,
gradients and Adam moments cost 16 bytes per trainable parameter, 4 per frozen one. The
planners fit GPU batch sizes with it; training checks hand-edited plans with it (GPU or CPU).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

TRAINABLE_BYTES_PER_PARAMETER = 16  # fp32 weight + gradient + two Adam moments
FROZEN_BYTES_PER_PARAMETER = 4
AMP_ACTIVATION_FACTOR = 0.6  # most saved activations are fp16 under autocast, some stay fp32
OVERHEAD_FACTOR = 1.25  # allocator fragmentation, cuDNN workspaces


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, NotImplementedError):  # a constructor that needs real values
        return build().to("meta")


def activation_bytes(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward pass of `module`."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(*inputs)
    return sum(saved.values())


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@dataclass(frozen=True)
class MemoryModel:
    """Estimated GPU bytes of a training step: fixed + batch_size * per_sample."""

    fixed_bytes: int
    per_sample_bytes: int

    def gigabytes(self, batch_size: int, amp: bool = True) -> float:
        activations = self.per_sample_bytes * batch_size * (AMP_ACTIVATION_FACTOR if amp else 1.0)
        return OVERHEAD_FACTOR * (self.fixed_bytes + activations) / 2**30

    def largest_batch(self, target_gigabytes: float, amp: bool = True) -> int:
        """The largest batch size that fits `target_gigabytes` (0 when not even one does)."""
        batch_size = 0
        while self.gigabytes(batch_size + 1, amp) <= target_gigabytes:
            batch_size += 1
        return batch_size


def available_gigabytes(device: torch.device) -> float | None:
    """Memory a training on `device` can still take: the GPU's free memory, or on the CPU the RAM the
    kernel can hand out without swapping (MemAvailable); None where the system does not tell."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return free_bytes / 2**30
    available_bytes = _meminfo_available_bytes()
    if available_bytes is None:
        try:  # free pages only (no reclaimable caches): smaller than MemAvailable, never larger
            available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return available_bytes / 2**30


def _meminfo_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024  # "MemAvailable:   123456 kB"
    return None
