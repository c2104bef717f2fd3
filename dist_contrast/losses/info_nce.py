"""InfoNCE / NT-Xent over any mix of negative pools, untiled or streaming over tiles."""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import (
    Temperature,
    check_2d,
    check_mask,
    compute_dtype,
    default_positive_index,
    temperature_tensor,
)
from dist_contrast.losses.partials import ConstantPoolLSE, KeyLSE, tile_logits


def check_pool_inputs(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None,
    query_negatives: Tensor | None,
    negative_mask: Tensor | None,
    query_negative_mask: Tensor | None,
    key_mask: Tensor | None,
    negative_lse: Tensor | None,
) -> None:
    """Raise a one-line ``ValueError`` for any input of the wrong shape or dtype."""
    check_2d("query", query)
    batch, dim = query.shape
    check_2d("key", key, dim)
    check_mask("key_mask", key_mask, (batch, key.shape[0]))
    if negatives is not None:
        check_2d("negatives", negatives, dim)
        check_mask("negative_mask", negative_mask, (batch, negatives.shape[0]))
    elif negative_mask is not None:
        raise ValueError("negative_mask was given without negatives")
    if query_negatives is not None:
        if query_negatives.dim() != 3 or query_negatives.shape[::2] != (batch, dim):
            shape = tuple(query_negatives.shape)
            raise ValueError(f"query_negatives must be [B={batch}, M, D={dim}], got {shape}")
        check_mask("query_negative_mask", query_negative_mask, tuple(query_negatives.shape[:2]))
    elif query_negative_mask is not None:
        raise ValueError("query_negative_mask was given without query_negatives")
    if negative_lse is not None and negative_lse.shape != (batch,):
        shape = tuple(negative_lse.shape)
        raise ValueError(f"negative_lse must have shape ({batch},), got {shape}")


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
    gradient. ``negatives`` and ``query_negatives`` are constants: they are detached and never
    receive a gradient (a queue or bank is written by an explicit update, not by backward).

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
    return info_nce_per_query(
        query, key, negatives, temperature=temperature, in_batch=in_batch,
        query_negatives=query_negatives, negative_mask=negative_mask, tile_size=tile_size,
        positive_index=positive_index, query_negative_mask=query_negative_mask,
        negative_lse=negative_lse, key_mask=key_mask,
    ).mean()


def info_nce_per_query(
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
    threshold: Tensor | None = None,
) -> Tensor:
    """:func:`info_nce` before the mean; ``threshold`` [B] (logit units s/τ, no gradient) drops
    every negative whose logit is below it (the hard loss's boundary).

    Shape:
        as :func:`info_nce`; threshold: [B] float32. Returns [B] float32.
    """
    check_pool_inputs(
        query, key, negatives, query_negatives, negative_mask, query_negative_mask,
        key_mask, negative_lse,
    )
    positive_index = default_positive_index(query, key, positive_index)
    tau = temperature_tensor(temperature, query)
    scaled_query = query.to(compute_dtype(query)) / tau
    positive_logit = (scaled_query * key[positive_index].to(scaled_query.dtype)).sum(dim=1)
    if tile_size is None:
        denominator = _untiled_denominator(
            scaled_query, key, negatives, query_negatives, negative_mask, query_negative_mask,
            key_mask, positive_index, in_batch, threshold,
        )
    else:
        denominator = _tiled_denominator(
            query, key, tau, negatives, query_negatives, negative_mask, query_negative_mask,
            key_mask, positive_index, in_batch, threshold, tile_size,
        )
    terms = [positive_logit[:, None], *denominator]
    if negative_lse is not None:
        terms.append(negative_lse.to(positive_logit.dtype)[:, None])
    return torch.logsumexp(torch.cat(terms, dim=1), dim=1) - positive_logit


def _masked(logits: Tensor, *masks: Tensor | None) -> Tensor:
    """``logits`` with −inf wherever any mask is True (zero gradient there)."""
    excluded = None
    for mask in masks:
        if mask is not None:
            excluded = mask if excluded is None else excluded | mask
    return logits if excluded is None else logits.masked_fill(excluded, float("-inf"))


def _below(logits: Tensor, threshold: Tensor | None) -> Tensor | None:
    return None if threshold is None else logits.detach() < threshold[:, None]


def _untiled_denominator(
    scaled_query: Tensor,
    key: Tensor,
    negatives: Tensor | None,
    query_negatives: Tensor | None,
    negative_mask: Tensor | None,
    query_negative_mask: Tensor | None,
    key_mask: Tensor | None,
    positive_index: Tensor,
    in_batch: bool,
    threshold: Tensor | None,
) -> list[Tensor]:
    """All negatives' logits as [B, ·] blocks, masked entries at −inf (plain autograd)."""
    blocks = []
    if in_batch:
        logits = tile_logits(scaled_query, key)  # [B, K]
        columns = torch.arange(key.shape[0], device=key.device)
        is_positive = columns[None, :] == positive_index[:, None]
        blocks.append(_masked(logits, is_positive, key_mask, _below(logits, threshold)))
    if negatives is not None:
        logits = tile_logits(scaled_query, negatives.detach())  # [B, N]
        blocks.append(_masked(logits, negative_mask, _below(logits, threshold)))
    if query_negatives is not None:
        logits = tile_logits(scaled_query, query_negatives.detach())  # [B, M]
        blocks.append(_masked(logits, query_negative_mask, _below(logits, threshold)))
    return blocks


def _tiled_denominator(
    query: Tensor,
    key: Tensor,
    tau: Tensor,
    negatives: Tensor | None,
    query_negatives: Tensor | None,
    negative_mask: Tensor | None,
    query_negative_mask: Tensor | None,
    key_mask: Tensor | None,
    positive_index: Tensor,
    in_batch: bool,
    threshold: Tensor | None,
    tile_size: int,
) -> list[Tensor]:
    """Each negative source's LSE as a [B, 1] block, streamed over tiles."""
    if tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size}")
    blocks = []
    if in_batch and key.shape[0] > 1:
        # Keys with a gradient need the two-pass function; constant keys (e.g. from a
        # momentum encoder) take the one-pass path like any pool.
        if key.requires_grad:
            lse = KeyLSE.apply(query, key, tau, key_mask, positive_index, threshold, tile_size)
        else:
            lse = ConstantPoolLSE.apply(
                query, tau, key, key_mask, positive_index, threshold, tile_size
            )
        blocks.append(lse[:, None])
    if negatives is not None:
        lse = ConstantPoolLSE.apply(
            query, tau, negatives.detach(), negative_mask, None, threshold, tile_size
        )
        blocks.append(lse[:, None])
    if query_negatives is not None:
        lse = ConstantPoolLSE.apply(
            query, tau, query_negatives.detach(), query_negative_mask, None, threshold, tile_size
        )
        blocks.append(lse[:, None])
    return blocks
