"""Small helpers shared by the losses: temperature handling, input checks, negative sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

Temperature = float | Tensor


def temperature_tensor(temperature: Temperature, like: Tensor) -> Tensor:
    """τ as a 0-dim float32 tensor on ``like``'s device, keeping its autograd graph.

    A Python float becomes a constant; a tensor is only cast (``.float()`` is differentiable),
    so a learnable τ receives its gradient through every loss.
    """
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0:
            shape = tuple(temperature.shape)
            raise ValueError(f"temperature must be a 0-dim tensor, got shape {shape}")
        return temperature.to(compute_dtype(temperature))
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return torch.tensor(float(temperature), dtype=compute_dtype(like), device=like.device)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype logits are computed in: at least float32 (bf16/fp16 are upcast), float64 kept."""
    return torch.promote_types(x.dtype, torch.float32)


def check_2d(name: str, x: Tensor, dim: int | None = None) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` is [rows, dim]."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dim {x.shape[1]}, expected {dim} (same as query)")


def check_mask(name: str, mask: Tensor | None, shape: tuple[int, ...]) -> None:
    """Raise a one-line ``ValueError`` unless ``mask`` is None or a bool tensor of ``shape``."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = excluded), got {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")


def default_positive_index(query: Tensor, key: Tensor, positive_index: Tensor | None) -> Tensor:
    """Each query's positive row in ``key``; ``arange(B)`` by default (key i is query i's)."""
    batch = query.shape[0]
    if key.shape[0] < batch:
        raise ValueError(f"key must have at least as many rows as query ({key.shape[0]} < {batch})")
    if positive_index is None:
        return torch.arange(batch, device=query.device)
    if positive_index.shape != (batch,):
        shape = tuple(positive_index.shape)
        raise ValueError(f"positive_index must have shape ({batch},), got {shape}")
    return positive_index.long()


class Source(NamedTuple):
    """One source of negatives, what of it must not count, and the tile size it is streamed in
    (None: one tile).

    Shape:
        pool: [N, D] (shared) or [B, N, D] (per query). mask: [B, N] bool, True = excluded.
        exclude_index: [B] long, one more excluded column per query (the keys' positive).
    """

    pool: Tensor
    mask: Tensor | None
    exclude_index: Tensor | None
    tile_size: int | None


@dataclass(frozen=True)
class PoolTerms:
    """Every negative source of a batch of queries, checked once (see :meth:`build`).

    The losses' public functions take these as plain keyword tensors (see
    :func:`dist_contrast.losses.info_nce`); inside, one record travels instead.

    Shape:
        key: [K, D], K ≥ B. positive_index: [B] long. key_mask: [B, K] bool.
        negatives: [N, D]. negative_mask: [B, N] bool.
        query_negatives: [B, M, D]. query_negative_mask: [B, M] bool.
        negative_lse: [B]. threshold: [B] (logit units; only entries ≥ it count).
    """

    key: Tensor
    positive_index: Tensor
    in_batch: bool = True
    key_mask: Tensor | None = None
    negatives: Tensor | None = None
    negative_mask: Tensor | None = None
    query_negatives: Tensor | None = None
    query_negative_mask: Tensor | None = None
    negative_lse: Tensor | None = None
    tile_size: int | None = None
    threshold: Tensor | None = None

    @classmethod
    def build(
        cls,
        query: Tensor,
        key: Tensor,
        negatives: Tensor | None,
        *,
        in_batch: bool,
        query_negatives: Tensor | None,
        negative_mask: Tensor | None,
        tile_size: int | None,
        positive_index: Tensor | None,
        query_negative_mask: Tensor | None,
        key_mask: Tensor | None,
        negative_lse: Tensor | None = None,
    ) -> PoolTerms:
        """The record, after a one-line ``ValueError`` for any input of the wrong shape or dtype.

        Shape:
            query: [B, D]; the rest as the class. positive_index defaults to ``arange(B)``.
        """
        check_2d("query", query)
        batch, dim = query.shape
        check_2d("key", key, dim)
        check_mask("key_mask", key_mask, (batch, key.shape[0]))
        for name, pool in (("negatives", negatives), ("query_negatives", query_negatives)):
            if pool is not None and pool.requires_grad and torch.is_grad_enabled():
                # A pool is a constant here; silently cutting a gradient would be a wrong model.
                raise ValueError(
                    f"{name} carries a gradient, which a pool never receives; to train through "
                    "extra negatives, append them to key after the B positives (positive_index "
                    "then names each query's positive) or detach them"
                )
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
        return cls(
            key, default_positive_index(query, key, positive_index), in_batch, key_mask,
            negatives, negative_mask, query_negatives, query_negative_mask, negative_lse, tile_size,
        )

    def sources(self, *, tile_keys: bool = True) -> list[Source]:
        """The sources in the order every loss joins them: keys, shared pool, per-query pool.

        The keys keep their gradient and exclude each query's positive; the pools are detached
        (constants: a queue or bank is written by an update, not by backward). With
        ``tile_keys=False`` the keys are one tile: the simple loss takes them in one product,
        and its boundary pass must see the same logits.
        """
        sources = []
        # A single key is the positive itself: no in-batch negative at all.
        if self.in_batch and self.key.shape[0] > 1:
            key_tile = self.tile_size if tile_keys else None
            sources.append(Source(self.key, self.key_mask, self.positive_index, key_tile))
        for pool, mask in (
            (self.negatives, self.negative_mask),
            (self.query_negatives, self.query_negative_mask),
        ):
            if pool is not None:
                sources.append(Source(pool.detach(), mask, None, self.tile_size))
        return sources
