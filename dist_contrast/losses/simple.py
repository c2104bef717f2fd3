"""Wang & Liu's simple loss ``−s_ii + λ Σ_{j≠i} s_ij``: every negative gets the same gradient λ."""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import PoolTerms, Source, compute_dtype
from dist_contrast.losses.partials import tile_blocks, tile_exclusion, tile_logits, weighted_sum


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
    terms = PoolTerms.build(
        query, key, negatives, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=tile_size, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask,
    )
    return simple_loss_per_query(query, terms, lam).mean()


def simple_loss_per_query(query: Tensor, terms: PoolTerms, lam: float) -> Tensor:
    """:func:`simple_loss` before the mean; ``terms.threshold`` (similarity units, no gradient)
    drops every negative below it (the hard loss's boundary).

    Shape:
        query: [B, D]. Returns [B].
    """
    q = query.to(compute_dtype(query))
    loss = -(q * terms.key[terms.positive_index].to(q.dtype)).sum(dim=1)
    for source in terms.sources(tile_keys=False):
        # Σ_j kept_ij (q_i · k_j) = q_i · (Σ_j kept_ij k_j); autograd carries the keys' gradient.
        loss = loss + lam * (q * _kept_sum(q.detach(), source, terms.threshold)).sum(dim=1)
    return loss


def _kept_sum(query: Tensor, source: Source, threshold: Tensor | None) -> Tensor:
    """``Σ_n kept_bn · pool_n`` for each query, streaming over tiles; the selection has no
    gradient, the pool keeps its own (the keys').

    Shape:
        query: [B, D]. pool: [N, D] or [B, N, D]. Returns [B, D].
    """
    pool, mask, exclude_index, tile_size = source
    if mask is None and exclude_index is None and threshold is None:
        total = pool.to(query.dtype).sum(dim=-2)
        return total.expand_as(query) if pool.dim() == 2 else total
    out = torch.zeros_like(query)
    for start, end, block in tile_blocks(pool, tile_size):
        with torch.no_grad():
            logits = None if threshold is None else tile_logits(query, block)
            excluded = tile_exclusion(mask, exclude_index, start, end, logits, threshold)
        assert excluded is not None  # one of mask / exclude_index / threshold is set here
        out = out + weighted_sum((~excluded).to(query.dtype), block)
    return out
