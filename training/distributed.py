"""torchrun / DDP plumbing: one process per device; gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def launch_env() -> tuple[int, int]:
    """(LOCAL_RANK, WORLD_SIZE) as torchrun sets them; (0, 1) for a plain process."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def select_device(
    name: str, local_rank: int = 0, world: int = 1, *, cuda_available: bool
) -> torch.device:
    """The device a process uses (pure: no CUDA call).

    ``auto``: ``cuda:<local_rank>`` when CUDA is available, else the CPU. ``cuda`` without
    an index: ``cuda:<local_rank>``, so each torchrun rank takes its own GPU. An explicit
    ``cuda:N`` is honoured in a single process only: under torchrun it would put every
    rank on one GPU.

    Raises:
        ValueError: unknown device name, CUDA requested but unavailable, or an explicit
            CUDA index with more than one process.
    """
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from exc
    if device.type != "cuda":
        return device
    if not cuda_available:
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available")
    if device.index is None:
        return torch.device("cuda", local_rank)
    if world > 1:
        raise ValueError(
            f"device {name!r} would put all {world} ranks on one GPU; use --device cuda "
            "(each rank takes cuda:LOCAL_RANK)"
        )
    return device


def resolve_device(name: str) -> torch.device:
    """``select_device`` for this process (torchrun's environment); makes a CUDA device
    the current one, so collectives and stray ``.cuda()`` calls land on it too."""
    local_rank, world = launch_env()
    device = select_device(name, local_rank, world, cuda_available=torch.cuda.is_available())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    local_rank, world = launch_env()
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def any_rank_values(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's scalar ``value``, as a float32 [world] tensor on each rank.

    One small all-reduce; every rank must call it at the same point (it is a collective).
    """
    values = torch.zeros(info.world, dtype=torch.float32, device=value.device)
    values[info.rank] = value.detach().float()
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)  # zeros elsewhere: NaN/inf survive
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
