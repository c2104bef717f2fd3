"""InfoNCE / NT-Xent over any mix of negative pools, untiled or streaming over tiles."""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import PoolTerms, Temperature, compute_dtype, temperature_tensor
from dist_contrast.losses.partials import PoolLSE, drop_excluded_, tile_logits


def info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: Temperature,
    in_batch: bool = True,
    query_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
    tile_size: int | None = None,
    positive_index: Tensor | None = None,
    query_negative_mask: Tensor | None = None,
    negative_lse: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Mean InfoNCE loss ``−log exp(s_ii/τ) / (exp(s_ii/τ) + Σ_neg exp(s_ij/τ))``.

    The denominator joins every negative source that is given: the other rows of ``key``
    (``in_batch``), a shared pool ``negatives`` (queue, bank), per-query ``query_negatives``
    (mined), and ``negative_lse``, the log-sum-exp of a pool computed elsewhere (a pool sharded
    across workers, see :mod:`dist_contrast.losses.partials`). Masks are True where an entry must
    not count (a false negative: same instance or same label); masked entries get exactly zero
    gradient. ``negatives`` and ``query_negatives`` are constants (a queue or bank is written by
    an explicit update, not by backward): given with a gradient they are refused (ValueError).
    Negatives that must train (a file's hard negatives, DPR) are rows of ``key`` after the
    positives, with ``positive_index``: they get their gradient like any key.

    Logits and log-sum-exp are float32 whatever the embeddings' dtype. With ``tile_size`` the
    negatives are streamed in tiles with an online log-sum-exp, holding at most
    ``B × tile_size`` logits in forward and backward; values and gradients equal the untiled ones
    up to float rounding.

    Shape:
        query: [B, D]. key: [K, D], K ≥ B. negatives: [N, D]. negative_mask: [B, N] bool.
        query_negatives: [B, M, D]. query_negative_mask: [B, M] bool. negative_lse: [B].
        positive_index: [B] long (default ``arange(B)``). key_mask: [B, K] bool (True =
        key j is not a negative of query i; the positive is always kept). Returns a 0-dim
        float32 loss.
    """
    terms = PoolTerms.build(
        query, key, negatives, in_batch=in_batch, query_negatives=query_negatives,
        negative_mask=negative_mask, tile_size=tile_size, positive_index=positive_index,
        query_negative_mask=query_negative_mask, key_mask=key_mask, negative_lse=negative_lse,
    )
    return info_nce_per_query(query, terms, temperature_tensor(temperature, query)).mean()


def info_nce_per_query(query: Tensor, terms: PoolTerms, tau: Tensor) -> Tensor:
    """:func:`info_nce` before the mean; ``terms.threshold`` (logit units s/τ, no gradient)
    drops every negative whose logit is below it (the hard loss's boundary).

    Each source joins the denominator as its logits [B, N] with −inf where excluded (untiled,
    plain autograd) or, with a tile size, as its streamed LSE [B, 1].

    Shape:
        query: [B, D]. tau: 0-dim. Returns [B] float32.
    """
    if terms.tile_size is not None and terms.tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer, got {terms.tile_size}")
    scaled_query = query.to(compute_dtype(query)) / tau
    positive = terms.key[terms.positive_index].to(scaled_query.dtype)
    positive_logit = (scaled_query * positive).sum(dim=1)
    columns = [positive_logit[:, None]]
    for pool, mask, exclude_index, tile_size in terms.sources():
        if tile_size is None:
            logits = tile_logits(scaled_query, pool)
            end = logits.shape[1]
            columns.append(drop_excluded_(logits, mask, exclude_index, 0, end, terms.threshold))
        else:
            lse = PoolLSE.apply(query, tau, pool, mask, exclude_index, terms.threshold, tile_size)
            columns.append(lse[:, None])
    if terms.negative_lse is not None:
        columns.append(terms.negative_lse.to(positive_logit.dtype)[:, None])
    return torch.logsumexp(torch.cat(columns, dim=1), dim=1) - positive_logit
