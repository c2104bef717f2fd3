"""The one thin layer that calls ``torch.distributed``.

Everything here works in a single process with no process group: rank 0 of a world of 1,
gathers return their input, reductions are identities. Losses, negative sources and models
never import ``torch.distributed``; the trainer calls these helpers explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is up with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 with no group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 with no group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _gather_list(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, without gradient.

    All ranks must pass the same shape.

    Shape: [B, ...] -> [W*B, ...], rank r's rows at [r*B, (r+1)*B).
    """
    if not is_distributed():
        return tensor.detach()
    with torch.no_grad():
        return torch.cat(_gather_list(tensor.detach()), dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank's share of the gradient home.

    Every rank's loss may depend on every rank's rows, so the gradient of row j is the sum,
    over ranks, of that rank's gradient for row j: an all-reduce of the full gradient,
    then the local slice. With the optimiser averaging parameter gradients over ranks, this
    makes W processes on B rows each equal one process on the W*B concatenated rows.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return torch.cat(_gather_list(tensor), dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0; the gradient flows back to each owner.

    The local rows of the result are this rank's own tensor (they keep its autograd graph);
    gradients that other ranks' losses put on our rows are summed back to us in backward.

    Shape: [B, ...] -> [W*B, ...], rank r's rows at [r*B, (r+1)*B).
    """
    if not is_distributed():
        return tensor
    gathered = _AllGatherWithGrad.apply(tensor)
    # Put the local tensor itself back in its slot so the local part keeps its exact graph
    # (and its dtype/device history) rather than a copy that went through the collective.
    start = rank() * tensor.shape[0]
    return torch.cat(
        [gathered[:start], tensor, gathered[start + tensor.shape[0] :]], dim=0
    )


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``max``, ``min`` or ``mean``); returns ``tensor``."""
    if not is_distributed():
        return tensor
    if op == "mean":
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(tensor, op=ops[op])
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src``; returns ``tensor``."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def collective_device() -> torch.device:
    """Where a collective's tensors must live: the current GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_ranks(flags: Sequence[bool]) -> list[bool]:
    """Several flags agreed in one all-reduce: element ``i`` is True on every rank if
    ``flags[i]`` is True on any rank (every rank passes as many flags); how ranks agree to skip
    a step or stop."""
    if not is_distributed():
        return [bool(flag) for flag in flags]
    votes = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=collective_device())
    return [bool(v > 0) for v in all_reduce(votes, op="max").tolist()]
