"""The seam between negative pools and the loss: :class:`Negatives`, :class:`NegativeSource`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class Negatives:
    """The step's negatives for the local queries: the one record that travels from the pools
    to the objectives. Every tensor but ``pool_lse`` is detached (no grad).

    Shape:
        pool: [N, D], shared by all B local queries (queue, or the bank as a pool); with
            ``pool_is_sharded`` it is this rank's shard of the global pool.
        pool_mask: [B, N] bool, True = excluded (the query's own instance).
        pool_ids: [N] dataset ids of the pool's rows (-1 = unknown); the sharded LSE builds
            its mask for the gathered queries from these (a sharded pool that masks nothing
            leaves them None).
        pool_lse: [B] float32, ``log Σ_n exp(q·pool_n/τ)`` over the whole sharded pool, with
            gradient in the query and τ; set by the trainer from
            ``collective.sharded_pool_lse`` and read by objectives in place of ``pool``.
        query_negatives: [B, M, D] mined per-query negatives.
        query_negative_mask: [B, M] bool, True = excluded (padding of short rows).
        query_negative_ids: [B, M] their dataset ids (-1 = padding).
        noise: [B, m, D] uniform noise entries for NCE.
        metrics: counts and pool statistics for logging (``negatives/*``, ``bank/*``, ...).
    """

    pool: Tensor | None = None
    pool_mask: Tensor | None = None
    pool_ids: Tensor | None = None
    # True when ``pool`` is this rank's 1/W shard: no rank holds the whole pool, so the
    # denominator's pool term must come from ``pool_lse``.
    pool_is_sharded: bool = False
    # A sharded pool's rows on all ranks together (for the per-query count metric).
    pool_global_rows: int | None = None
    pool_lse: Tensor | None = None
    query_negatives: Tensor | None = None
    query_negative_mask: Tensor | None = None
    query_negative_ids: Tensor | None = None
    noise: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class NegativeSource(Protocol):
    """A stateful pool of negatives. Never calls ``torch.distributed``; the trainer orders calls.

    ``negatives`` is called between the forward passes and the loss; ``update`` after the
    optimiser step with the keys of the whole global batch (the trainer gathers them), so every
    rank's state stays identical (replicated) or consistent (sharded).
    """

    def negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """Negatives for the local queries ``query`` [B, D] with dataset ``ids`` [B]."""
        ...

    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        """Absorb the global batch's keys [W·B, D] (no grad), ids [W·B], labels [W·B]."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class InstanceMemory(Protocol):
    """A source that keeps one entry per dataset instance (InstDisc's memory bank): what the
    trainer reads of it beyond its negatives. An objective whose positive is the memory
    (``loss.positive=memory``) takes ``entries(ids)`` as the positives; ``penalty`` is added
    to the loss (None: nothing); the NCE normaliser Z is re-estimated every
    ``normalizer_every`` steps (0: once)."""

    normalizer_every: int

    def entries(self, ids: Tensor) -> Tensor:
        """The stored entries of ``ids``, before this step's update. Shape: [B] -> [B, D]."""
        ...

    def penalty(self, features: Tensor, ids: Tensor) -> Tensor | None:
        """An extra loss term of ``features`` [B, D] against the entries, or None."""
        ...
