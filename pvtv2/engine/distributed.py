"""One process per device, as torchrun starts them: where this process runs and how it talks to the others.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address); a plain
``python -m pvtv2 train`` has none of them and is the one process of a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from ..errors import InputError


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The process that prints, writes metrics and saves checkpoints."""
        return self.rank == 0


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu`` or ``cuda``: this process's device."""
    if request == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device 'cuda' was asked for, but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu or auto"
        )
    if request == "cpu" or (request == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if request not in ("auto", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {request!r}")
    return torch.device("cuda", local_rank)


def setup(device_request: str) -> DistributedEnv:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU), if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistributedEnv(rank, world_size, local_rank, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over all processes (``values`` itself in a world of one)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """``value`` (detached) averaged over the processes of a distributed run (MMDetection's ``reduce_mean``):
    each process then divides its loss by the same normaliser, and DDP's gradient mean equals one big batch's."""
    value = value.detach().clone()
    if not dist.is_initialized():
        return value
    return all_reduce_sum(value) / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Every ``world_size``-th item from ``rank`` on: the shards cover the dataset once, without the padding
    of DistributedSampler, so that sums of per-item figures over all processes are exact."""
    return dataset if world_size == 1 else Subset(dataset, range(rank, len(dataset), world_size))


def wrap_model(model: nn.Module, env: DistributedEnv) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes (it broadcasts rank 0's
    weights to the others), else ``model`` itself."""
    if env.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
