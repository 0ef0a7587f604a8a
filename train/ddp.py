"""torchrun support: one process per device, detected from the RANK / WORLD_SIZE environment.

Without those variables everything here is a no-op for a single process, so the loop reads the same
either way. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "init", "barrier", "all_reduce_sum", "average_gradients", "broadcast_object", "shutdown"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> Dist:
    """Join the process group torchrun describes (idempotent); Dist() when not under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, local_world=local_world)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(ctx: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place; returns the tensor."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(ctx: Dist, parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over processes, in place (for modules outside DDP)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_object(ctx: Dist, value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(*, finished: bool = False) -> None:
    """Leave the process group. After a finished run every rank meets at a barrier first: a rank that tears gloo
    down while another still sends aborts that one (SIGABRT seen once in the two-process test run). After a
    failure there is no barrier, which the other ranks might never reach."""
    if dist.is_available() and dist.is_initialized():
        try:
            if finished:
                dist.barrier()
        finally:
            dist.destroy_process_group()
