"""The composite of the configured sources, and the factory the trainer calls."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dist_contrast.negatives.bank import MemoryBank
from dist_contrast.negatives.base import Negatives, NegativeSource
from dist_contrast.negatives.config import NegativesConfig
from dist_contrast.negatives.miner import FaissMiner
from dist_contrast.negatives.momentum import MomentumEncoder
from dist_contrast.negatives.queue import KeyQueue
from dist_contrast.negatives.registry import (
    SourceContext,
    SourceSpec,
    register_source,
    source_names,
    source_spec,
)


def _first(*tensors: Tensor | None) -> Tensor | None:
    return next((t for t in tensors if t is not None), None)


class NegativePool:
    """Every configured source behind one ``update`` / ``state_dict``.

    ``sources`` maps each stateful source's key (``queue``, ``bank``, ``miner``, or a
    registered one) to the source, in update order. ``in_batch`` says whether the loss should
    also use the other keys of the global batch (``sources`` has ``batch``); those come from the
    trainer's gather, not from here. The step's negatives come from
    :func:`dist_contrast.negatives.collective.collect_negatives`, which merges the local
    sources with a sharded miner's search over every rank's queries.
    """

    def __init__(
        self, *, in_batch: bool, sources: dict[str, NegativeSource], world_size: int = 1
    ) -> None:
        self.in_batch = in_batch
        self.sources = dict(sources)
        self.world_size = world_size

    @property
    def queue(self) -> KeyQueue | None:
        return self.sources.get("queue")  # type: ignore[return-value]

    @property
    def bank(self) -> MemoryBank | None:
        return self.sources.get("bank")  # type: ignore[return-value]

    @property
    def miner(self) -> FaissMiner | None:
        return self.sources.get("miner")  # type: ignore[return-value]

    def local_negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """Merge what each source gives for the local queries, leaving out a sharded miner
        (its search needs every rank: ``collective.collect_negatives`` adds it).

        Shape: query [B, D], ids [B], labels [B] or None -> :class:`Negatives`.
        """
        merged = Negatives()
        for name, source in self.sources.items():
            if name == "miner" and self.miner is not None and self.miner.sharded:
                continue
            merged = self.merge(merged, source.negatives(query, ids, labels))
        merged.metrics.update(self._count_metrics(merged, query.shape[0]))
        return merged

    def merge(self, a: Negatives, b: Negatives) -> Negatives:
        """Combine two partial results; each field comes from at most one source."""
        if a.pool is not None and b.pool is not None:
            raise ValueError("two sources both gave a shared pool; configure only one")
        merged = Negatives(
            pool=_first(a.pool, b.pool),
            pool_mask=_first(a.pool_mask, b.pool_mask),
            pool_ids=_first(a.pool_ids, b.pool_ids),
            pool_is_sharded=a.pool_is_sharded or b.pool_is_sharded,
            pool_lse=_first(a.pool_lse, b.pool_lse),
            query_negatives=_first(a.query_negatives, b.query_negatives),
            query_negative_mask=_first(a.query_negative_mask, b.query_negative_mask),
            query_negative_ids=_first(a.query_negative_ids, b.query_negative_ids),
            noise=_first(a.noise, b.noise),
            metrics={**a.metrics, **b.metrics},
        )
        if b.query_negatives is not None:
            merged.metrics.update(self._count_metrics(merged, b.query_negatives.shape[0]))
        return merged

    def _count_metrics(self, negatives: Negatives, batch: int) -> dict[str, float]:
        """Mean number of negatives each query's denominator gets, by source and in total."""
        counts: dict[str, float] = {}
        if self.in_batch:
            counts["negatives/batch"] = float(self.world_size * batch - 1)
        if negatives.pool is not None:
            size = negatives.pool.shape[0]
            if negatives.pool_is_sharded and self.queue is not None:
                size = self.queue.filled
            mask = negatives.pool_mask
            masked = 0.0 if mask is None else float(mask.sum()) / batch
            counts["negatives/pool"] = size - masked
        if negatives.query_negative_mask is not None:
            valid = (~negatives.query_negative_mask).sum(dim=1).float().mean()
            counts["negatives/mined"] = float(valid)
        if negatives.noise is not None:
            counts["negatives/noise"] = float(negatives.noise.shape[1])
        counts["negatives/per_query"] = sum(
            value for key, value in counts.items() if key != "negatives/noise"
        )
        return counts

    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        """Absorb the global batch's keys after the optimiser step (queue, bank, then miner).

        Shape: keys [W·B, D] (the gathered global batch), ids [W·B], labels [W·B].
        """
        keys = keys.detach()
        for source in self.sources.values():
            source.update(keys, ids, labels, step)

    def state_dict(self) -> dict[str, Any]:
        return {name: source.state_dict() for name, source in self.sources.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.sources):
            raise ValueError(
                f"checkpoint has negative sources {sorted(state)}, the config builds "
                f"{sorted(self.sources)}; resume with the same negatives.sources"
            )
        for name, source in self.sources.items():  # bank before miner
            source.load_state_dict(state[name])


def build_negative_pool(
    cfg: NegativesConfig,
    *,
    dataset_size: int,
    dim: int,
    rank: int,
    world_size: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    nce_noise: bool = True,
) -> NegativePool:
    """The composite of ``cfg.sources``, built in registration order; rank and world size
    come in explicitly.

    The same ``seed`` on every rank gives every rank the same bank initialisation; noise and
    rank-window sampling use per-rank streams derived from it. With ``nce_noise=False`` (the
    loss is not NCE) the bank draws no noise samples: they would be B·m·D unused floats.
    """
    context = SourceContext(dataset_size=dataset_size, dim=dim, rank=rank,
                            world_size=world_size, device=device, seed=seed, nce_noise=nce_noise)
    for name in source_names():
        spec = source_spec(name)
        if name in cfg.sources and spec.build is not None:
            context.built[spec.key] = spec.build(cfg, context)
    return NegativePool(in_batch="batch" in cfg.sources, sources=context.built,
                        world_size=world_size)


def _queue(cfg: NegativesConfig, context: SourceContext) -> KeyQueue:
    return KeyQueue(
        cfg.queue.size,
        context.dim,
        sharded=cfg.queue.layout == "sharded",
        rank=context.rank,
        world_size=context.world_size,
        mask_same_instance=cfg.queue.mask_same_instance,
        device=context.device,
    )


def _bank(cfg: NegativesConfig, context: SourceContext) -> MemoryBank:
    return MemoryBank(
        context.dataset_size,
        context.dim,
        momentum=cfg.bank.momentum,
        noise_samples=cfg.bank.noise_samples if context.nce_noise else 0,
        as_pool=cfg.bank.as_pool,
        seed=context.seed,
        noise_seed=context.seed + 1 + context.rank,
        device=context.device,
    )


def _miner(cfg: NegativesConfig, context: SourceContext) -> FaissMiner:
    return FaissMiner(cfg.miner, context.built["bank"], rank=context.rank,
                      world_size=context.world_size, seed=context.seed + context.rank)


register_source("queue", SourceSpec(key="queue", build=_queue))
register_source("bank", SourceSpec(key="bank", build=_bank))
# The miner's index is over the memory bank: built after it, and it absorbs keys after it.
register_source("mined", SourceSpec(key="miner", build=_miner, requires=("bank",)))


def build_momentum_encoder(
    cfg: NegativesConfig, query_encoder: nn.Module
) -> MomentumEncoder | None:
    """The MoCo key encoder when ``cfg.momentum_encoder`` is on, else None."""
    return MomentumEncoder(query_encoder, cfg.momentum) if cfg.momentum_encoder else None
