"""Hard contrastive losses (Wang & Liu): only negatives at or above a per-anchor boundary count.

The boundary is the K-th largest similarity of the anchor's negatives (``top_k``, K = 4095 in
the paper) or a similarity quantile of them (``quantile``). Negatives below it are truncated:
they are removed like masked entries, so they contribute nothing and get exactly zero gradient.
The boundary itself is a selection, computed without gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dist_contrast.losses._common import (
    Temperature,
    compute_dtype,
    default_positive_index,
    temperature_tensor,
)
from dist_contrast.losses.info_nce import check_pool_inputs, info_nce_per_query
from dist_contrast.losses.partials import tile_exclusion, tile_logits
from dist_contrast.losses.simple import simple_loss_per_query


def hard_info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: Temperature,
    top_k: int | None = None,
    quantile: float | None = None,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    tile_size: int | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE over each anchor's hardest negatives only (exactly one of ``top_k``/``quantile``).

    ``top_k``: the K most similar unmasked negatives count (all of them if fewer). ``quantile``
    q ∈ [0, 1]: negatives at or above the per-anchor q-quantile of the unmasked negatives'
    similarities count (the 'lower' empirical quantile, as ``numpy.quantile(method="lower")``:
    q = 0 keeps all, q = 1 only the hardest). Ties at the boundary are all kept. With
    ``tile_size`` the boundary is found by a streaming top-k over tiles (``B × (k + tile_size)``
    values alive) and the loss is streamed as in :func:`info_nce`. A pool LSE from elsewhere
    (``negative_lse``) cannot be truncated, so it is not accepted here.

    Shape:
        as :func:`dist_contrast.losses.info_nce`. Returns a 0-dim float32 loss.
    """
    tau = temperature_tensor(temperature, query)
    threshold = negative_boundary(
        query, key, negatives, tau=tau, top_k=top_k, quantile=quantile, in_batch=in_batch,
        query_negatives=query_negatives, negative_mask=negative_mask,
        positive_index=positive_index, query_negative_mask=query_negative_mask,
        key_mask=key_mask, tile_size=tile_size, key_tile_size=tile_size,
    )
    return info_nce_per_query(
        query, key, negatives, temperature=tau, in_batch=in_batch,
        query_negatives=query_negatives, negative_mask=negative_mask, tile_size=tile_size,
        positive_index=positive_index, query_negative_mask=query_negative_mask,
        key_mask=key_mask, threshold=threshold,
    ).mean()


def hard_simple_loss(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    lam: float = 1.0,
    top_k: int | None = None,
    quantile: float | None = None,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    tile_size: int | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """The simple loss ``−s_ii + λ Σ_j s_ij`` over each anchor's hardest negatives only.

    The boundary is as in :func:`hard_info_nce` (Wang & Liu's explicit hard negative sampling,
    e.g. ``top_k=4095``).

    Shape:
        as :func:`dist_contrast.losses.simple_loss`. Returns a 0-dim loss.
    """
    unit = torch.ones((), dtype=compute_dtype(query), device=query.device)
    threshold = negative_boundary(
        query, key, negatives, tau=unit, top_k=top_k, quantile=quantile, in_batch=in_batch,
        query_negatives=query_negatives, negative_mask=negative_mask,
        positive_index=positive_index, query_negative_mask=query_negative_mask,
        key_mask=key_mask, tile_size=tile_size, key_tile_size=None,
    )
    return simple_loss_per_query(
        query, key, negatives, lam=lam, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=tile_size, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask, threshold=threshold,
    ).mean()


def _kept_counts(top_k: int | None, quantile: float | None, available: Tensor) -> Tensor:
    """How many negatives each anchor keeps, from its number of unmasked negatives."""
    if (top_k is None) == (quantile is None):
        raise ValueError("give exactly one of top_k (an int ≥ 1) or quantile (in [0, 1])")
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        return available.clamp(max=top_k)
    assert quantile is not None
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    # The 'lower' q-quantile of n sorted values is the one at ascending index ⌊q·(n−1)⌋;
    # everything from there up is kept.
    below = torch.floor(quantile * (available - 1).clamp(min=0).double()).long()
    return (available - below).clamp(min=0) * (available > 0)


def negative_boundary(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    tau: Tensor,
    top_k: int | None = None,
    quantile: float | None = None,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    tile_size: int | None = None,
    key_tile_size: int | None = None,
) -> Tensor:
    """Each anchor's boundary logit (s/τ): its k-th largest over all unmasked negatives.

    Computed with the same tiles and the same arithmetic as the loss pass, so the kept set is
    exactly the k largest (plus ties). +inf where an anchor has no negative at all.

    Shape:
        as :func:`hard_info_nce`; tau: 0-dim. Returns [B] (no gradient).
    """
    check_pool_inputs(
        query, key, negatives, query_negatives, negative_mask, query_negative_mask, key_mask, None
    )
    positive_index = default_positive_index(query, key, positive_index)
    with torch.no_grad():
        scaled_query = query.detach().to(compute_dtype(query)) / tau.detach()
        batch = query.shape[0]
        sources: list[tuple[Tensor, Tensor | None, Tensor | None, int | None]] = []
        available = torch.zeros(batch, dtype=torch.long, device=query.device)
        if in_batch:
            columns = torch.arange(key.shape[0], device=key.device)
            excluded = columns[None, :] == positive_index[:, None]
            if key_mask is not None:
                excluded = excluded | key_mask
            available += (~excluded).sum(dim=1)
            sources.append((key.detach(), key_mask, positive_index, key_tile_size))
        for pool, mask in ((negatives, negative_mask), (query_negatives, query_negative_mask)):
            if pool is not None:
                count = pool.shape[-2]
                available += count if mask is None else count - mask.sum(dim=1)
                sources.append((pool.detach(), mask, None, tile_size))
        kept = _kept_counts(top_k, quantile, available)
        width = int(kept.max().item()) if batch else 0
        if width == 0:
            return torch.full((batch,), math.inf, dtype=scaled_query.dtype, device=query.device)
        best = torch.full((batch, width), -math.inf, dtype=scaled_query.dtype,
                          device=query.device)
        for pool, mask, exclude_index, step_size in sources:
            size = pool.shape[-2]
            step = max(1, size if step_size is None else step_size)
            for start in range(0, size, step):
                end = min(size, start + step)
                block = pool[:, start:end] if pool.dim() == 3 else pool[start:end]
                logits = tile_logits(scaled_query, block)
                excluded_tile = tile_exclusion(mask, exclude_index, start, end)
                if excluded_tile is not None:
                    logits.masked_fill_(excluded_tile, -math.inf)
                merged = torch.cat([best, logits], dim=1)
                best = merged.topk(min(width, merged.shape[1]), dim=1).values
        boundary = best.gather(1, (kept - 1).clamp(min=0)[:, None]).squeeze(1)
        return torch.where(kept > 0, boundary, torch.full_like(boundary, math.inf))
