"""Hard contrastive losses (Wang & Liu): only negatives at or above a per-anchor boundary count.

The boundary is the K-th largest similarity of the anchor's negatives (``top_k``, K = 4096 in
the paper) or a similarity quantile of them (``quantile``). Negatives below it are truncated:
they are removed like masked entries, so they contribute nothing and get exactly zero gradient.
The boundary itself is a selection, computed without gradient.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from dist_contrast.losses._common import PoolTerms, Temperature, compute_dtype, temperature_tensor
from dist_contrast.losses.info_nce import info_nce_per_query
from dist_contrast.losses.partials import drop_excluded_, tile_blocks, tile_exclusion, tile_logits
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
    terms = PoolTerms.build(
        query, key, negatives, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=tile_size, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask,
    )
    threshold = negative_boundary(query, terms, tau=tau, top_k=top_k, quantile=quantile)
    return info_nce_per_query(query, replace(terms, threshold=threshold), tau).mean()


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
    e.g. ``top_k=4096``).

    Shape:
        as :func:`dist_contrast.losses.simple_loss`. Returns a 0-dim loss.
    """
    terms = PoolTerms.build(
        query, key, negatives, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=tile_size, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask,
    )
    # Similarity units (τ = 1), with the keys in one tile as the simple loss multiplies them.
    unit = torch.ones((), dtype=compute_dtype(query), device=query.device)
    threshold = negative_boundary(
        query, terms, tau=unit, top_k=top_k, quantile=quantile, tile_keys=False
    )
    return simple_loss_per_query(query, replace(terms, threshold=threshold), lam).mean()


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
    terms: PoolTerms,
    *,
    tau: Tensor,
    top_k: int | None = None,
    quantile: float | None = None,
    tile_keys: bool = True,
) -> Tensor:
    """Each anchor's boundary logit (s/τ): its k-th largest over all unmasked negatives.

    Computed with the same tiles (``tile_keys`` as the loss pass takes the keys) and the same
    arithmetic as the loss pass, so the kept set is exactly the k largest (plus ties). +inf
    where an anchor has no negative at all.

    Shape:
        query: [B, D]. tau: 0-dim. Returns [B] (no gradient).
    """
    sources = terms.sources(tile_keys=tile_keys)
    with torch.no_grad():
        scaled_query = query.detach().to(compute_dtype(query)) / tau.detach()
        batch = query.shape[0]
        available = torch.zeros(batch, dtype=torch.long, device=query.device)
        for pool, mask, exclude_index, _ in sources:
            excluded = tile_exclusion(mask, exclude_index, 0, pool.shape[-2])
            available += pool.shape[-2] - (0 if excluded is None else excluded.sum(dim=1))
        kept = _kept_counts(top_k, quantile, available)
        width = int(kept.max().item()) if batch else 0
        if width == 0:
            return torch.full((batch,), math.inf, dtype=scaled_query.dtype, device=query.device)
        best = torch.full((batch, width), -math.inf, dtype=scaled_query.dtype,
                          device=query.device)
        for pool, mask, exclude_index, tile_size in sources:
            for start, end, block in tile_blocks(pool, tile_size):
                logits = tile_logits(scaled_query, block)
                drop_excluded_(logits, mask, exclude_index, start, end)
                merged = torch.cat([best, logits], dim=1)
                best = merged.topk(min(width, merged.shape[1]), dim=1).values
        boundary = best.gather(1, (kept - 1).clamp(min=0)[:, None]).squeeze(1)
        return torch.where(kept > 0, boundary, torch.full_like(boundary, math.inf))


def relative_penalty_seen(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: Temperature,
    softmax: bool = True,
    top_k: int | None = None,
    quantile: float | None = None,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Each query's relative penalty over exactly the negatives a pool loss counts.

    The columns are the entries in the order the losses join them (the keys with in-batch
    negatives, the shared pool, the per-query pool); an entry the loss does not count (masked,
    the query's positive, or below a hard loss's boundary when ``top_k``/``quantile`` is
    given) gets 0. ``softmax``:
    InfoNCE's share ``exp(s_ij/τ) / Σ_k exp(s_ik/τ)`` over the counted entries; otherwise the
    simple losses' equal weight ``1/n_i`` on each (their gradient is λ on every negative), with
    the boundary found in similarity units as those losses find it. A query that counts no
    negative gets a row of zeros. No gradient.

    Shape:
        as :func:`hard_info_nce`. Returns [B, N] float32 (float64 for float64 inputs), N the
        columns of all sources.
    """
    terms = PoolTerms.build(
        query, key, negatives, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=None, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask,
    )
    dtype = compute_dtype(query)
    tau = (temperature_tensor(temperature, query) if softmax
           else torch.ones((), dtype=dtype, device=query.device))
    hard = top_k is not None or quantile is not None
    threshold = (negative_boundary(query, terms, tau=tau, top_k=top_k, quantile=quantile,
                                   tile_keys=softmax) if hard else None)
    with torch.no_grad():
        scaled_query = query.detach().to(dtype) / tau.detach()
        blocks = []
        for pool, mask, exclude_index, _ in terms.sources(tile_keys=softmax):
            logits = tile_logits(scaled_query, pool)
            blocks.append(drop_excluded_(logits, mask, exclude_index, 0, pool.shape[-2],
                                         threshold))
        if not blocks:
            return torch.zeros(query.shape[0], 0, dtype=dtype, device=query.device)
        logits = torch.cat(blocks, dim=1)
        counted = torch.isfinite(logits)
        if softmax:
            shift = torch.where(counted, logits, -math.inf).amax(dim=1, keepdim=True)
            weights = torch.where(counted, torch.exp(logits - shift.clamp(min=-1e30)), 0.0)
        else:
            weights = counted.to(dtype)
        total = weights.sum(dim=1, keepdim=True)
        return torch.where(total > 0, weights / total.clamp(min=torch.finfo(dtype).tiny), 0.0)
