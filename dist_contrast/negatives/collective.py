"""The collective steps of the negative pools; the trainer calls each one explicitly.

Sources never communicate. What needs every rank (shuffle-BN, the sharded queue's joint
log-sum-exp, the sharded miner's top-k merge) lives here and goes through
:mod:`dist_contrast.dist`, so with no process group every function is its single-process self.
All ranks must call these functions together with the same local batch size B.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dist_contrast import dist
from dist_contrast.losses import PoolPartials, partials_lse, pool_partials
from dist_contrast.losses._common import Temperature, temperature_tensor
from dist_contrast.losses.partials import lse_backward, rescale_partials
from dist_contrast.negatives.base import Negatives

if TYPE_CHECKING:
    from dist_contrast.negatives.miner import FaissMiner
    from dist_contrast.negatives.pool import NegativePool


# ---------------------------------------------------------------------------- shuffle-BN


def batch_shuffle(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Shuffle the global batch across workers before the key encoder (MoCo's shuffle-BN).

    Each rank's BatchNorm then normalises a random subset of the global batch, so its batch
    statistics carry no trace of which key is the query's positive. Rank 0 draws the
    permutation and broadcasts it; each rank takes its slice.

    Shape: x [B, ...] -> shuffled [B, ...], unshuffle_index [W·B] (long).
    """
    gathered = dist.all_gather_no_grad(x)
    total = gathered.shape[0]
    if dist.rank() == 0:
        permutation = torch.randperm(total, generator=generator).to(x.device)
    else:
        permutation = torch.empty(total, dtype=torch.long, device=x.device)
    dist.broadcast(permutation, src=0)
    start = dist.rank() * x.shape[0]
    unshuffle_index = torch.argsort(permutation)
    return gathered[permutation[start : start + x.shape[0]]], unshuffle_index


def batch_unshuffle(y: Tensor, unshuffle_index: Tensor) -> Tensor:
    """Undo :func:`batch_shuffle` on the key encoder's output: each rank gets its own rows back.

    Shape: y [B, ...] (shuffled order), unshuffle_index [W·B] -> [B, ...] in original order.
    """
    gathered = dist.all_gather_no_grad(y)
    start = dist.rank() * y.shape[0]
    return gathered[unshuffle_index[start : start + y.shape[0]]]


# ---------------------------------------------------------------------------- sharded pool


def _all_reduce_partials(parts: PoolPartials) -> PoolPartials:
    """Merge every rank's partials of the same queries into the whole pool's (in place)."""
    merged = rescale_partials(parts, dist.all_reduce(parts.max.clone(), op="max"))
    packed = torch.cat(
        [merged.sum_exp[:, None], merged.weighted_sim[:, None], merged.weighted_keys], dim=1
    )
    dist.all_reduce(packed, op="sum")  # one collective for all three sums
    return PoolPartials(merged.max, packed[:, 0], packed[:, 2:], packed[:, 1])


class _ShardedPoolLSE(torch.autograd.Function):
    """LSE of each local query over a pool split across ranks, differentiable in q and τ.

    Forward: gather all queries, compute their partials against the local shard, merge
    across ranks with two all-reduces, keep the local rows. Backward needs no communication:
    the merged partials already hold ∂LSE/∂q = W/(S·τ) and ∂LSE/∂τ = −U/(S·τ²) of the
    local queries over the *whole* pool.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        query: Tensor,
        tau: Tensor,
        shard: Tensor,
        shard_ids: Tensor | None,
        query_ids: Tensor | None,
        tile_size: int | None,
    ) -> Tensor:
        all_queries = dist.all_gather_no_grad(query.detach())
        mask = None
        if shard_ids is not None and query_ids is not None:
            all_ids = dist.all_gather_no_grad(query_ids)
            mask = all_ids.to(shard_ids.device)[:, None] == shard_ids[None, :]
        parts = pool_partials(
            all_queries, shard, temperature=tau.detach(), negative_mask=mask, tile_size=tile_size
        )
        merged = _all_reduce_partials(parts)
        start = dist.rank() * query.shape[0]
        rows = slice(start, start + query.shape[0])
        local = PoolPartials(*(field[rows] for field in merged))
        ctx.save_for_backward(local.sum_exp, local.weighted_keys, local.weighted_sim, tau)
        ctx.query_dtype = query.dtype
        return partials_lse(local)

    @staticmethod
    def backward(ctx: Any, grad_lse: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_query, grad_tau = lse_backward(
            ctx.saved_tensors, grad_lse, ctx.needs_input_grad[:2], ctx.query_dtype
        )
        return grad_query, grad_tau, None, None, None, None


def sharded_pool_lse(
    query: Tensor,
    negatives: Negatives,
    ids: Tensor | None,
    *,
    temperature: Temperature,
    tile_size: int | None = None,
    mask_same_instance: bool = True,
) -> Tensor:
    """``log Σ_n exp(q·pool_n/τ)`` over the whole sharded pool, for ``info_nce(negative_lse=)``.

    ``negatives`` is what a sharded queue returned (``pool_is_sharded``); entries whose id
    equals the query's id are masked when ``mask_same_instance``. Same value and gradients as
    passing the replicated pool to the loss, at ~1/W of the pool memory per rank.

    Shape: query [B, D] (with grad), ids [B] -> [B] float32, differentiable in query and τ.
    """
    if negatives.pool is None or not negatives.pool_is_sharded:
        raise ValueError("sharded_pool_lse needs the Negatives of a sharded pool")
    tau = temperature_tensor(temperature, query)
    shard_ids = negatives.pool_ids if mask_same_instance else None
    query_ids = ids if mask_same_instance else None
    lse: Tensor = _ShardedPoolLSE.apply(query, tau, negatives.pool, shard_ids, query_ids, tile_size)
    return lse


# ---------------------------------------------------------------------------- sharded miner


def merge_topk(scores: Tensor, ids: Tensor, local_rows: int) -> tuple[Tensor, Tensor]:
    """Merge every rank's top-C of all gathered queries into the global top-C of the local ones.

    Shape: scores, ids [W·B, C] (this rank's shard) -> [B, C] (local queries, all shards).
    """
    world = dist.world_size()
    if world == 1:
        return scores, ids
    start = dist.rank() * local_rows
    rows = slice(start, start + local_rows)
    # [W, W·B, C] -> the local rows of every shard, side by side: [B, W·C].
    all_scores = dist.all_gather_no_grad(scores[None]).transpose(0, 1)[rows].flatten(1)
    all_ids = dist.all_gather_no_grad(ids[None]).transpose(0, 1)[rows].flatten(1)
    all_scores = all_scores.masked_fill(all_ids < 0, float("-inf"))
    best, position = all_scores.topk(scores.shape[1], dim=1)
    return best, all_ids.gather(1, position)


def mine_sharded(
    miner: FaissMiner, query: Tensor, ids: Tensor, labels: Tensor | None
) -> Negatives:
    """Mine with a sharded index: every rank searches all queries in its id range, then merge.

    Shape: query [B, D], ids [B] -> Negatives with query_negatives [B, M, D].
    """
    all_queries = dist.all_gather_no_grad(query.detach())
    scores, cand_ids, seconds = miner.search(all_queries)
    scores, cand_ids = merge_topk(scores, cand_ids, query.shape[0])
    return miner.select(query, ids, labels, scores, cand_ids, search_seconds=seconds)


def collect_negatives(
    pool: NegativePool, query: Tensor, ids: Tensor, labels: Tensor | None
) -> Negatives:
    """The step's negatives from every configured source, including the collective ones.

    Call on every rank, between the forward passes and the loss.

    Shape: query [B, D], ids [B], labels [B] or None -> :class:`Negatives`.
    """
    negatives = pool.local_negatives(query, ids, labels)
    for miner in pool.collective_sources:  # a sharded miner
        negatives = pool.merge(negatives, mine_sharded(miner, query, ids, labels))
    return negatives
