"""Thin helpers around torch.distributed so single-process code paths need no special cases."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (returns a new tensor; identity without a process group)."""
    if not is_dist():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def max_over_ranks(value: int, device: torch.device | str = "cpu") -> int:
    """The largest of every rank's `value` (a collective: every rank must call it at the same point)."""
    if not is_dist():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj: object) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects; [obj] without a group)."""
    if not is_dist():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def init_from_env(device: str) -> tuple[int, int, int]:
    """Join the process group `torchrun` describes (RANK/WORLD_SIZE/LOCAL_RANK); no-op otherwise.

    Returns (rank, world_size, local_rank). NCCL on CUDA, gloo on CPU.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # the device comes from the LOCAL rank, never the global one
    if not is_dist():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank
