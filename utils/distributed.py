"""Data-parallel training over several processes started by torchrun.

`torchrun --nproc_per_node N train_unsupervised.py ...` starts N copies of the stage; each
reads its rank from the environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the process
group (NCCL between GPUs, gloo between CPU processes), takes its own share of each epoch's
seeded permutation and trains on `--data_size` images per step: the global batch is N times
`--data_size`. Per step the ranks exchange the gradients (DistributedDataParallel
all-reduces them in buckets while the backward pass runs), rank 0's BatchNorm buffers and,
for simclr with `--simclr_gather`, the projections; everything else (pairs, losses, the
optimizer step) stays within the rank. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of a run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def is_active() -> bool:
    """Whether this process is one of several ranks of a run."""
    return dist.is_initialized() and dist.get_world_size() > 1


def current_rank() -> int:
    """This process's rank among the ranks of the run (0 without torchrun)."""
    return dist.get_rank() if is_active() else 0


def launched_ranks() -> Ranks:
    """The ranks torchrun gave this process, or SINGLE when it was started directly."""
    try:
        ranks = Ranks(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise UserError(f"RANK {ranks.rank} is outside WORLD_SIZE {ranks.world_size}")
    return ranks


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (its local GPU under CUDA)."""
    if not ranks.distributed:
        return device
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {ranks.local_rank}: only {torch.cuda.device_count()} CUDA "
                "device(s) visible; start at most one process per GPU"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        rank=ranks.rank,
        world_size=ranks.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(order: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's share of an epoch's order: every world_size-th index, starting at the rank.

    The order is cut to a multiple of the world size first, so every rank takes the same
    number of steps (a rank with one more step would wait for the others forever); the few
    images cut differ from epoch to epoch with the permutation.
    """
    usable = len(order) // ranks.world_size * ranks.world_size
    return order[ranks.rank : usable : ranks.world_size]


class _TrainingStep(nn.Module):
    """The method's training step as a forward pass, so DistributedDataParallel can wrap it:
    DDP prepares its gradient all-reduce in forward(), which a method does not go through."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, views, labels, index):
        return self.method.training_step(views, labels, index)


def wrap_training_step(method: nn.Module, ranks: Ranks, device: torch.device) -> DistributedDataParallel | None:
    """Under torchrun, the method's training step wrapped by DDP, which averages the gradients
    over the ranks during backward and broadcasts rank 0's weights and buffers; else None."""
    if not ranks.distributed:
        return None
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_TrainingStep(method), device_ids=device_ids)


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank. DDP broadcasts them before each
    forward pass, so after an epoch's last step every rank holds its own batch's update."""
    if is_active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def min_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def max_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def gather_objects(value) -> list:
    """Every rank's `value` (any picklable object), in rank order."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_object(value):
    """Rank 0's `value` on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_with_gradient(rows: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order; the gradient of each rank's rows flows back
    to that rank (summed over the ranks' identical losses, which DDP's averaging undoes)."""
    return _GatherWithGradient.apply(rows) if is_active() else rows


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's rows: sum the gradients of all ranks,
        # then keep the slice of this rank's rows (the gathered rows are small).
        grad = grad.contiguous()
        dist.all_reduce(grad)
        size = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * size : (dist.get_rank() + 1) * size]
