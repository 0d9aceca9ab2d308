"""DistributedDataParallel: detected from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

NCCL on CUDA, gloo on CPU. Rank 0 alone writes files; every rank samples with its own seed and
validates its share of the validation cases, and the per-case results are all-gathered so each
rank computes the same summary and takes the same early-stopping decision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(env: dict[str, str] | None = None) -> DistContext:
    """The process's place in a torchrun job; a single process without the variables."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistContext()
    return DistContext(
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
    )


def init_distributed(context: DistContext, device: torch.device) -> None:
    """Join the process group (no-op for a single process)."""
    if not context.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], context: DistContext) -> list[T]:
    """This rank's share, round-robin, so shares differ in size by at most one."""
    return list(items[context.rank :: context.world_size])


def gather_lists(local: list[Any], context: DistContext) -> list[Any]:
    """Concatenate every rank's list (same result on all ranks)."""
    if not context.enabled:
        return list(local)
    gathered: list[list[Any] | None] = [None] * context.world_size
    dist.all_gather_object(gathered, local)
    return [item for part in gathered for item in (part or [])]


def mean_across_ranks(values: Sequence[float], context: DistContext) -> list[float]:
    """Element-wise mean of ``values`` over ranks (for logging the training losses)."""
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / context.world_size).tolist()


def broadcast_module(module: torch.nn.Module, context: DistContext) -> None:
    """Every rank takes rank 0's parameters and buffers of ``module``."""
    if not context.enabled:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()
