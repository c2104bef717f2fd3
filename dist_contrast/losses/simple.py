"""Wang & Liu's simple loss ``−s_ii + λ Σ_{j≠i} s_ij``: every negative gets the same gradient λ."""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import compute_dtype, default_positive_index
from dist_contrast.losses.info_nce import check_pool_inputs
from dist_contrast.losses.partials import tile_exclusion, tile_logits, weighted_sum


def simple_loss(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    lam: float = 1.0,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    tile_size: int | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Mean simple loss ``−s_ii + λ Σ_j s_ij`` over the same negative sources as ``info_nce``.

    It is linear in the similarities, so no temperature enters and there is no log-sum-exp to
    share across workers (no ``negative_lse``). ``negatives`` / ``query_negatives`` are constants
    (detached); masked entries (True) do not count and get exactly zero gradient.

    Shape:
        query: [B, D]. key: [K, D]. negatives: [N, D]. negative_mask: [B, N] bool.
        query_negatives: [B, M, D]. query_negative_mask: [B, M] bool. positive_index: [B].
        key_mask: [B, K] bool. Returns a 0-dim loss (float32 at least).
    """
    return simple_loss_per_query(
        query, key, negatives, lam=lam, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=tile_size, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask,
    ).mean()


def simple_loss_per_query(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    lam: float = 1.0,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    tile_size: int | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    threshold: Tensor | None = None,
) -> Tensor:
    """:func:`simple_loss` before the mean; ``threshold`` [B] (similarity units, no gradient)
    drops every negative below it (the hard loss's boundary).

    Shape:
        as :func:`simple_loss`; threshold: [B]. Returns [B].
    """
    check_pool_inputs(
        query, key, negatives, query_negatives, negative_mask, query_negative_mask, key_mask, None
    )
    positive_index = default_positive_index(query, key, positive_index)
    q = query.to(compute_dtype(query))
    loss = -(q * key[positive_index].to(q.dtype)).sum(dim=1)
    if in_batch:
        with torch.no_grad():
            columns = torch.arange(key.shape[0], device=key.device)
            excluded = columns[None, :] == positive_index[:, None]
            if key_mask is not None:
                excluded = excluded | key_mask
            if threshold is not None:
                excluded = excluded | (tile_logits(q.detach(), key) < threshold[:, None])
        # Σ_j kept_ij (q_i · k_j) = q_i · (kept @ k)_i; autograd carries the keys' gradient.
        loss = loss + lam * (q * ((~excluded).to(q.dtype) @ key.to(q.dtype))).sum(dim=1)
    for pool, mask in ((negatives, negative_mask), (query_negatives, query_negative_mask)):
        if pool is not None:
            kept = _kept_pool_sum(q.detach(), pool.detach(), mask, threshold, tile_size)
            loss = loss + lam * (q * kept).sum(dim=1)
    return loss


def _kept_pool_sum(
    query: Tensor,
    pool: Tensor,
    mask: Tensor | None,
    threshold: Tensor | None,
    tile_size: int | None,
) -> Tensor:
    """``Σ_n kept_bn · pool_n`` for each query (no gradient), streaming over tiles.

    Shape:
        query: [B, D]. pool: [N, D] or [B, N, D]. mask: [B, N]. Returns [B, D].
    """
    if mask is None and threshold is None:
        total = pool.to(query.dtype).sum(dim=-2)
        return total.expand_as(query) if pool.dim() == 2 else total
    size = pool.shape[-2]
    step = max(1, size if tile_size is None else tile_size)
    out = torch.zeros_like(query)
    for start in range(0, size, step):
        end = min(size, start + step)
        block = pool[:, start:end] if pool.dim() == 3 else pool[start:end]
        excluded = tile_exclusion(mask, None, start, end)
        if threshold is not None:
            below = tile_logits(query, block) < threshold[:, None]
            excluded = below if excluded is None else excluded | below
        assert excluded is not None  # one of mask / threshold is set on this path
        out += weighted_sum((~excluded).to(query.dtype), block)
    return out
