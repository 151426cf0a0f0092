"""Distributed training through torchrun: process group, device, and the few collectives the loop needs.

Processes are started by ``torchrun`` (one per GPU, any number of machines), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them. Without
them everything here is a no-op on a single process. The backend is nccl on CUDA and gloo on CPU; a second gloo
group carries small host-side flags (which gradients exist) so that reading them never synchronises the GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from perception.utils.device import resolve_device

_CPU_GROUP = None  # gloo group for host-side tensors when the default backend is nccl


@dataclass
class DistContext:
    """Where this process stands.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes files (checkpoints, logs, metrics)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group that torchrun describes in the environment (or stay a single process).

    Args:
        device: ``train.device``; under torchrun ``auto``/``cuda`` pick the GPU numbered ``LOCAL_RANK``.
    """
    global _CPU_GROUP
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        _CPU_GROUP = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistContext(rank, world_size, local_rank, dev)


def cleanup_distributed() -> None:
    """Leave the process group (if any)."""
    global _CPU_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    _CPU_GROUP = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes in place (no-op for a single process)."""
    if is_distributed():
        group = _CPU_GROUP if tensor.device.type == "cpu" else None
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process (``[obj]`` for a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_CPU_GROUP)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_CPU_GROUP)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_CPU_GROUP)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over all processes, in one flat all-reduce per dtype and device.

    A parameter keeps no gradient only where no process produced one (the flags are exchanged on the host, so
    this needs no GPU synchronisation); where some did, the others count as zero, as DistributedDataParallel
    counts them.
    """
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    all_reduce_sum(has)
    world = dist.get_world_size()
    buckets: dict[tuple, list[torch.nn.Parameter]] = {}
    for p, count in zip(params, has.tolist()):
        if count == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
