"""Streaming log-sum-exp over tiles of negatives, and its mergeable per-query statistics.

One pass over a pool of negatives (a queue, a bank, a key matrix) computes, per query, the
online-softmax statistics of ``z_n = s_n / τ`` with ``s_n = q · pool_n``:

    max            m = max_n z_n
    sum_exp        S = Σ_n exp(z_n − m)
    weighted_keys  W = Σ_n exp(z_n − m) · pool_n
    weighted_sim   U = Σ_n exp(z_n − m) · s_n          (= q · W, s_n is linear in pool_n)

so that ``LSE = m + log S``, ``∂LSE/∂q = W / (S·τ)`` and ``∂LSE/∂τ = −U / (S·τ²)``. The gradient of
the query is therefore accumulated *in the same pass* as the value, with the usual online-softmax
rescaling, and a pool that needs no gradient costs exactly the two matrix products ``q @ poolᵀ``
and ``P @ pool``, tile by tile: never more than ``B × tile_size`` logits are alive.

Statistics of disjoint parts of a pool (one shard per worker) merge exactly with
:func:`combine_partials`; that is how a pool sharded across workers is joined into one LSE.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from dist_contrast.losses._common import (
    Temperature,
    check_2d,
    check_mask,
    compute_dtype,
    temperature_tensor,
)


class PoolPartials(NamedTuple):
    """Per-query online-softmax statistics of one (part of a) pool.

    Shape:
        max: [B] float32, running max of s/τ over the unmasked pool (−inf if it is empty).
        sum_exp: [B] float32, Σ exp(s/τ − max).
        weighted_keys: [B, D] float32, Σ exp(s/τ − max) · pool_n.
        weighted_sim: [B] float32, Σ exp(s/τ − max) · s_n.

    ``∂LSE/∂q = weighted_keys / (sum_exp·τ)`` and ``∂LSE/∂τ = −weighted_sim / (sum_exp·τ²)``.
    """

    max: Tensor
    sum_exp: Tensor
    weighted_keys: Tensor
    weighted_sim: Tensor


def finite_shift(maximum: Tensor) -> Tensor:
    """``maximum`` with 0 where it is −inf (a row with nothing unmasked): shifting by it keeps
    exp(−inf − (−inf)) = NaN out while every term of such a row stays exactly 0.

    Shape:
        maximum: [B]. Returns [B].
    """
    return torch.where(torch.isinf(maximum), torch.zeros_like(maximum), maximum)


def rescale_partials(parts: PoolPartials, new_max: Tensor) -> PoolPartials:
    """``parts`` re-expressed relative to ``new_max`` (≥ every part's max), so that the sums of
    disjoint parts of a pool simply add: the merge step of :func:`combine_partials` and of the
    all-reduce across workers. The result's ``max`` is ``new_max``.

    Shape:
        parts: [..., B] / [..., B, D] fields (e.g. [P, B] for P stacked parts). new_max: [B].
    """
    rescale = torch.exp(parts.max - finite_shift(new_max))  # an empty part (max −inf): 0
    return PoolPartials(
        new_max, rescale * parts.sum_exp, rescale[..., None] * parts.weighted_keys,
        rescale * parts.weighted_sim,
    )


def tile_blocks(pool: Tensor, tile_size: int | None) -> Iterator[tuple[int, int, Tensor]]:
    """``(start, end, pool rows start:end)`` for consecutive tiles; one tile when ``tile_size``
    is None.

    Shape:
        pool: [N, D] (shared) or [B, N, D] (per query); blocks [t, D] or [B, t, D].
    """
    size = pool.shape[-2]
    step = max(1, size if tile_size is None else tile_size)
    for start in range(0, size, step):
        end = min(size, start + step)
        yield start, end, (pool[:, start:end] if pool.dim() == 3 else pool[start:end])


def tile_exclusion(
    mask: Tensor | None,
    exclude_index: Tensor | None,
    start: int,
    end: int,
    logits: Tensor | None = None,
    threshold: Tensor | None = None,
) -> Tensor | None:
    """Bool [B, end − start], True where an entry of this tile must not count (or None).

    An entry is out when ``mask`` says so, when it is the query's ``exclude_index`` column (its
    positive among the keys), or when its logit is below the query's ``threshold`` (the hard
    losses' boundary; ``logits`` must then be this tile's, as the boundary pass computed them).

    Shape:
        mask: [B, N] bool (whole pool). exclude_index: [B] long. logits: [B, end − start].
        threshold: [B].
    """
    excluded = None if mask is None else mask[:, start:end]
    if exclude_index is not None:
        columns = torch.arange(start, end, device=exclude_index.device)
        hit = exclude_index[:, None] == columns[None, :]
        excluded = hit if excluded is None else excluded | hit
    if threshold is not None:
        assert logits is not None, "a threshold is compared with the tile's logits"
        below = logits < threshold[:, None]
        excluded = below if excluded is None else excluded | below
    return excluded


def drop_excluded_(
    logits: Tensor,
    mask: Tensor | None,
    exclude_index: Tensor | None,
    start: int,
    end: int,
    threshold: Tensor | None = None,
) -> Tensor:
    """``logits`` with −inf, in place, wherever :func:`tile_exclusion` excludes an entry.

    −inf makes an entry count for nothing in a log-sum-exp or a top-k and gives it exactly
    zero gradient (``masked_fill_`` on a product's output is safe for autograd).

    Shape:
        logits: [B, end − start]; the rest as :func:`tile_exclusion`. Returns ``logits``.
    """
    excluded = tile_exclusion(mask, exclude_index, start, end, logits, threshold)
    return logits if excluded is None else logits.masked_fill_(excluded, -math.inf)


def tile_logits(scaled_query: Tensor, block: Tensor) -> Tensor:
    """``z = (q/τ) · block`` for one tile, float32.

    Every pass that must agree on a logit bit-for-bit (the hard losses' boundary pass and the
    loss pass) goes through this one function with the same tiles.

    Shape:
        scaled_query: [B, D] float32. block: [t, D] (shared pool) or [B, t, D] (per query).
        Returns [B, t] float32.
    """
    block = block.to(scaled_query.dtype)
    if block.dim() == 2:
        return scaled_query @ block.T
    return torch.bmm(block, scaled_query[:, :, None]).squeeze(2)


def weighted_sum(weights: Tensor, block: Tensor) -> Tensor:
    """``Σ_n weights[b, n] · block_n`` → [B, D] for a shared [t, D] or per-query [B, t, D] tile."""
    block = block.to(weights.dtype)
    if block.dim() == 2:
        return weights @ block
    return torch.bmm(weights[:, None, :], block).squeeze(1)


def stream_partials(
    query: Tensor,
    pool: Tensor,
    tau: Tensor,
    *,
    tile_size: int | None = None,
    mask: Tensor | None = None,
    exclude_index: Tensor | None = None,
    threshold: Tensor | None = None,
    exact_max: bool = True,
) -> PoolPartials:
    """Online-softmax statistics of ``pool`` for every query, without autograd.

    ``mask`` (True = excluded), ``exclude_index`` (one excluded column per query, e.g. its
    positive) and ``threshold`` (only logits ``z ≥ threshold`` count, in s/τ units) all remove
    entries; a query whose entries are all removed gets ``max = −inf`` and ``sum_exp = 0``.
    With ``exact_max=False`` the ``max`` field is only an upper bound of the logits (the
    statistics are relative to it); LSE, gradients and merging are the same, and one pass over
    each tile is saved. The losses use that; :func:`pool_partials` reports the true max.

    Shape:
        query: [B, D]. pool: [N, D] or [B, N, D]. tau: 0-dim. mask: [B, N] bool.
        exclude_index: [B] long. threshold: [B] float32 (logit units).
    """
    with torch.no_grad():
        q = query.detach().to(compute_dtype(query))
        scaled_query = q / tau.detach()
        # Shift every logit by a per-query upper bound c ≥ z (Cauchy–Schwarz) instead of the
        # running max: exp(z − c) ≤ 1 never overflows and no tile needs rescaling, so a tile
        # costs its two matrix products plus one exp and one row sum.
        bound = torch.linalg.vector_norm(scaled_query, dim=1) * _max_row_norm(pool, q.dtype)
        parts = _stream_shifted(scaled_query, pool, bound, tile_size, mask, exclude_index,
                                threshold, exact_max)
        # Where the bound is so far above a query's logits that exp(z − c) could lose precision
        # to underflow, redo that query with the exact running-max recurrence. (Rows with
        # nothing unmasked land here too and come back as max −inf, sum 0.)
        limit = 0.7 * math.log(torch.finfo(q.dtype).tiny)
        redo = parts.max - bound < limit if exact_max else parts.sum_exp < math.exp(limit)
        if redo.any():
            rows = redo.nonzero().squeeze(1)
            exact = _stream_running_max(
                scaled_query[rows], pool[rows] if pool.dim() == 3 else pool, tile_size,
                None if mask is None else mask[rows],
                None if exclude_index is None else exclude_index[rows],
                None if threshold is None else threshold[rows],
            )
            for field, value in zip(parts, exact, strict=True):
                field[rows] = value
        weighted_sim = (q * parts.weighted_keys).sum(dim=1)
        return PoolPartials(parts.max, parts.sum_exp, parts.weighted_keys, weighted_sim)


def _max_row_norm(pool: Tensor, dtype: torch.dtype) -> Tensor:
    """Largest row norm of a shared pool (0-dim) or of each query's own rows ([B])."""
    if pool.shape[-2] == 0:
        return torch.zeros(pool.shape[:-2], dtype=dtype, device=pool.device)
    return torch.linalg.vector_norm(pool.detach(), dim=-1, dtype=dtype).amax(dim=-1)


def _stream_shifted(
    scaled_query: Tensor, pool: Tensor, bound: Tensor, tile_size: int | None,
    mask: Tensor | None, exclude_index: Tensor | None, threshold: Tensor | None,
    exact_max: bool,
) -> PoolPartials:
    """Statistics with every exp taken relative to ``bound``; with ``exact_max`` re-expressed
    relative to the true max at the end (``weighted_sim`` is left to the caller)."""
    batch, dim = scaled_query.shape
    dtype, device = scaled_query.dtype, scaled_query.device
    bound = bound.to(dtype)
    sum_exp = torch.zeros(batch, dtype=dtype, device=device)
    weighted = torch.zeros(batch, dim, dtype=dtype, device=device)
    relative_max = torch.full((batch,), -math.inf, dtype=dtype, device=device)
    for start, end, block in tile_blocks(pool, tile_size):
        if block.dim() == 2 and threshold is None:
            # addmm writes z − c in the product's own pass.
            logits = torch.addmm(-bound[:, None], scaled_query, block.to(dtype).T)
            drop_excluded_(logits, mask, exclude_index, start, end)
        else:
            # The threshold is compared with exactly the logits the boundary pass saw; the
            # shift comes after (−inf − c stays −inf).
            logits = tile_logits(scaled_query, block)
            drop_excluded_(logits, mask, exclude_index, start, end, threshold)
            logits.sub_(bound[:, None])
        if exact_max:
            torch.maximum(relative_max, logits.amax(dim=1), out=relative_max)
        probs = logits.exp_()  # in place: the tile is the one big buffer
        sum_exp += probs.sum(dim=1)
        weighted += weighted_sum(probs, block)
    if not exact_max:
        return PoolPartials(bound, sum_exp, weighted, torch.zeros_like(sum_exp))
    # From shift c to shift max: multiply by exp(c − max) = exp(−relative_max). Rows with
    # nothing unmasked keep max −inf and zero sums; rows far below c are redone by the caller.
    finite = torch.isfinite(relative_max)
    factor = torch.where(finite, torch.exp(-relative_max.clamp(min=-80.0)), 0.0)
    return PoolPartials(
        torch.where(finite, bound + relative_max, -math.inf),
        sum_exp * factor, weighted * factor[:, None], torch.zeros_like(sum_exp),
    )


def _stream_running_max(
    scaled_query: Tensor, pool: Tensor, tile_size: int | None,
    mask: Tensor | None, exclude_index: Tensor | None, threshold: Tensor | None,
) -> PoolPartials:
    """The textbook online softmax (rescale by each new running max); exact for any logits."""
    batch, dim = scaled_query.shape
    dtype, device = scaled_query.dtype, scaled_query.device
    zeros = torch.zeros(batch, dtype=dtype, device=device)
    running = PoolPartials(
        torch.full((batch,), -math.inf, dtype=dtype, device=device), zeros,
        torch.zeros(batch, dim, dtype=dtype, device=device), zeros,
    )
    for start, end, block in tile_blocks(pool, tile_size):
        logits = drop_excluded_(
            tile_logits(scaled_query, block), mask, exclude_index, start, end, threshold
        )
        running = rescale_partials(running, torch.maximum(running.max, logits.amax(dim=1)))
        probs = logits.sub_(finite_shift(running.max)[:, None]).exp_()
        running = running._replace(
            sum_exp=running.sum_exp + probs.sum(dim=1),
            weighted_keys=running.weighted_keys + weighted_sum(probs, block),
        )
    return running


def pool_partials(
    query: Tensor,
    pool: Tensor,
    *,
    temperature: Temperature,
    negative_mask: Tensor | None = None,
    tile_size: int | None = None,
) -> PoolPartials:
    """Per-query statistics of a pool of negatives, streaming over tiles, without gradient.

    The pool (e.g. one worker's shard of a queue) is a constant; combine the shards' partials
    with :func:`combine_partials` and take :func:`partials_lse` to get each query's
    ``log Σ_n exp(s_n/τ)``. The gradients of that LSE follow from the partials alone:
    ``∂LSE/∂q = weighted_keys / (sum_exp·τ)`` and ``∂LSE/∂τ = −weighted_sim / (sum_exp·τ²)``.
    A query whose pool is entirely masked gets LSE = −inf, which contributes nothing.

    Shape:
        query: [B, D]. pool: [N, D]. negative_mask: [B, N] bool, True = excluded.
        Returns :class:`PoolPartials` with [B] / [B, D] float32 fields.
    """
    check_2d("query", query)
    check_2d("pool", pool, query.shape[1])
    check_mask("negative_mask", negative_mask, (query.shape[0], pool.shape[0]))
    tau = temperature_tensor(temperature, query)
    return stream_partials(query, pool, tau, tile_size=tile_size, mask=negative_mask)


def combine_partials(parts: Sequence[PoolPartials]) -> PoolPartials:
    """Merge the statistics of disjoint parts of a pool exactly (log-sum-exp merge).

    Shape:
        each part: [B] / [B, D] fields of the same B and D. Returns the same shapes.
    """
    if not parts:
        raise ValueError("combine_partials needs at least one PoolPartials")
    stacked = PoolPartials(*(torch.stack(field) for field in zip(*parts, strict=True)))
    merged = rescale_partials(stacked, stacked.max.amax(dim=0))
    return PoolPartials(merged.max, *(field.sum(dim=0) for field in merged[1:]))


def partials_lse(p: PoolPartials) -> Tensor:
    """``log Σ_n exp(s_n/τ) = max + log(sum_exp)``; −inf for an empty pool.

    Shape:
        Returns [B] float32.
    """
    # log(0) = −inf and −inf + (−inf) = −inf: an empty pool is −inf without NaN.
    return p.max + torch.log(p.sum_exp)


def lse_backward(
    saved: Sequence[Tensor],
    grad_lse: Tensor,
    needs_grad: Sequence[bool],
    query_dtype: torch.dtype,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``LSE = max + log(sum_exp)`` w.r.t. the query and τ, from saved partials.

    ``saved`` is ``(sum_exp, weighted_keys, weighted_sim, tau)``; ∂LSE/∂q = W/(S·τ) and
    ∂LSE/∂τ = −U/(S·τ²), scaled by the incoming ``grad_lse``. A query whose whole pool was
    masked has LSE −inf and gets no gradient (guarded against 0/0).

    Shape:
        sum_exp, weighted_sim, grad_lse: [B]. weighted_keys: [B, D]. tau: 0-dim.
        Returns ([B, D] or None, 0-dim or None).
    """
    sum_exp, weighted_keys, weighted_sim, tau = saved
    tau = tau.detach()
    nonempty = sum_exp > 0
    scale = torch.where(nonempty, grad_lse, 0.0) / torch.where(nonempty, sum_exp, 1.0)
    grad_query = grad_tau = None
    if needs_grad[0]:
        grad_query = (weighted_keys * (scale / tau)[:, None]).to(query_dtype)
    if needs_grad[1]:
        grad_tau = (-(scale * weighted_sim).sum() / tau**2).to(tau.dtype)
    return grad_query, grad_tau


class PoolLSE(torch.autograd.Function):
    """LSE over a pool in one streaming pass; differentiable in the query, τ and the pool.

    The query's gradient ``W / (S·τ)`` and τ's ``−U / (S·τ²)`` are accumulated during the forward
    pass, so for a constant pool (queue, bank, momentum keys) backward is a few [B, D]
    element-wise operations. Only a pool that needs a gradient (the keys) is kept for a second
    streaming pass in backward, which recomputes each tile's probabilities: two more matrix
    products per tile (``q @ tileᵀ``, then ``Pᵀ @ q``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        query: Tensor,
        tau: Tensor,
        pool: Tensor,
        mask: Tensor | None,
        exclude_index: Tensor | None,
        threshold: Tensor | None,
        tile_size: int | None,
    ) -> Tensor:
        parts = stream_partials(
            query, pool, tau, tile_size=tile_size, mask=mask,
            exclude_index=exclude_index, threshold=threshold, exact_max=False,
        )
        lse = partials_lse(parts)
        stats = (parts.sum_exp, parts.weighted_keys, parts.weighted_sim, tau)
        if ctx.needs_input_grad[2]:
            ctx.save_for_backward(*stats, query, pool, lse, mask, exclude_index, threshold)
        else:
            ctx.save_for_backward(*stats)
        ctx.query_dtype = query.dtype
        ctx.tile_size = tile_size
        return lse

    @staticmethod
    def backward(ctx: Any, grad_lse: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        grad_query, grad_tau = lse_backward(
            saved[:4], grad_lse, ctx.needs_input_grad[:2], ctx.query_dtype
        )
        grad_pool = None
        if ctx.needs_input_grad[2]:
            query, pool, lse, mask, exclude_index, threshold = saved[4:]
            grad_pool = _pool_gradient(
                query, pool, saved[3], lse, grad_lse, mask, exclude_index, threshold,
                ctx.tile_size,
            )
        return grad_query, grad_tau, grad_pool, None, None, None, None


def _pool_gradient(
    query: Tensor,
    pool: Tensor,
    tau: Tensor,
    lse: Tensor,
    grad_lse: Tensor,
    mask: Tensor | None,
    exclude_index: Tensor | None,
    threshold: Tensor | None,
    tile_size: int | None,
) -> Tensor:
    """``∂(Σ_b grad_lse_b · LSE_b)/∂pool``, recomputing the probabilities tile by tile.

    Shape:
        query: [B, D]. pool: [K, D] (a shared pool; per-query pools are constants). tau: 0-dim.
        lse, grad_lse: [B]. Returns [K, D] in pool's dtype.
    """
    scaled_query = query.to(compute_dtype(query)) / tau.detach()
    # A query whose whole pool was excluded (LSE −inf) contributes nothing.
    shift = finite_shift(lse)
    grad = torch.where(torch.isinf(lse), 0.0, grad_lse)
    out = torch.empty(pool.shape, dtype=scaled_query.dtype, device=pool.device)
    for start, end, block in tile_blocks(pool, tile_size):
        logits = tile_logits(scaled_query, block)
        drop_excluded_(logits, mask, exclude_index, start, end, threshold)
        probs = logits.sub_(shift[:, None]).exp_().mul_(grad[:, None])
        out[start:end] = probs.T @ scaled_query
    return out.to(pool.dtype)
