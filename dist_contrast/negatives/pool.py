"""The composite of the configured sources, and the factory the trainer calls."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dist_contrast.negatives.base import InstanceMemory, Negatives, NegativeSource
from dist_contrast.negatives.config import NegativesConfig
from dist_contrast.negatives.momentum import MomentumEncoder
from dist_contrast.negatives.registry import SourceContext, source_names, source_spec


def _first(*tensors: Tensor | None) -> Tensor | None:
    return next((t for t in tensors if t is not None), None)


class NegativePool:
    """Every configured source behind one ``update`` / ``state_dict``.

    ``sources`` maps each stateful source's key (``SourceSpec.key``) to the source, in update
    order; ``pool.<key>`` reads one (None for a registered source that is not configured).
    ``in_batch`` says whether the loss should also use the other keys of the global batch;
    those come from the trainer's gather, not from here. The step's negatives come from
    :func:`dist_contrast.negatives.collective.collect_negatives`, which merges the local
    sources with the searches that need every rank's queries (a sharded miner).
    """

    def __init__(
        self, *, in_batch: bool, sources: dict[str, NegativeSource], world_size: int = 1
    ) -> None:
        self.in_batch = in_batch
        self.sources = dict(sources)
        self.world_size = world_size
        # The source that keeps one entry per dataset instance (the bank), if any: found once
        # here, not on every step (a runtime protocol check is slow).
        self.instance_memory: InstanceMemory | None = next(
            (s for s in self.sources.values() if isinstance(s, InstanceMemory)), None)

    def __getattr__(self, key: str) -> Any:
        sources = self.__dict__.get("sources", {})
        if key in sources:
            return sources[key]
        if not key.startswith("_") and key in {source_spec(n).key for n in source_names()}:
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    @property
    def collective_sources(self) -> list[Any]:
        """The sources whose search needs every rank's queries (``needs_every_rank``)."""
        return [s for s in self.sources.values() if getattr(s, "needs_every_rank", False)]

    @property
    def normalizer_every(self) -> int:
        """How often the NCE normaliser Z is re-estimated (0: once); the instance memory's."""
        memory = self.instance_memory
        return memory.normalizer_every if memory is not None else 0

    def penalty(self, features: Tensor, ids: Tensor) -> Tensor | None:
        """The sources' extra loss terms (the bank's proximal term) against their state before
        this step's update; None when there are none.

        Shape: features [B, D] (with grad), ids [B] -> scalar.
        """
        memory = self.instance_memory
        return memory.penalty(features, ids) if memory is not None else None

    def seconds(self) -> float | None:
        """The sources' running total of seconds in their own upkeep (the miner's searches and
        rebuilds); None when no configured source keeps time."""
        totals = [s.total_seconds for s in self.sources.values() if hasattr(s, "total_seconds")]
        return sum(totals) if totals else None

    def local_negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """Merge what each source gives for the local queries, leaving out the collective ones
        (their search needs every rank: ``collective.collect_negatives`` adds them).

        Shape: query [B, D], ids [B], labels [B] or None -> :class:`Negatives`.
        """
        merged = Negatives()
        collective = self.collective_sources
        for source in self.sources.values():
            if any(source is other for other in collective):
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
            pool_global_rows=a.pool_global_rows if a.pool_global_rows is not None
            else b.pool_global_rows,
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
            if negatives.pool_is_sharded and negatives.pool_global_rows is not None:
                size = negatives.pool_global_rows
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
        """Absorb the global batch's keys after the optimiser step, in build order (a bank
        before the miner that indexes it).

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
        for name, source in self.sources.items():  # in build order: bank before miner
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
    """The composite of ``cfg.sources``, built in :func:`~.registry.source_names` order, each
    from its own settings section; rank and world size come in explicitly.

    The same ``seed`` on every rank gives every rank the same bank initialisation; noise and
    rank-window sampling use per-rank streams derived from it. With ``nce_noise=False`` (the
    loss is not NCE) the bank draws no noise samples: they would be B·m·D unused floats.
    """
    context = SourceContext(dataset_size=dataset_size, dim=dim, rank=rank,
                            world_size=world_size, device=device, seed=seed, nce_noise=nce_noise)
    for name in cfg.stateful:
        spec = source_spec(name)
        assert spec.build is not None  # stateful: it has a builder
        context.built[spec.key] = spec.build(cfg.settings_of(name), context)
    return NegativePool(in_batch=cfg.in_batch, sources=context.built, world_size=world_size)


def build_momentum_encoder(
    cfg: NegativesConfig, query_encoder: nn.Module
) -> MomentumEncoder | None:
    """The MoCo key encoder when ``cfg.momentum_encoder`` is on, else None."""
    return MomentumEncoder(query_encoder, cfg.momentum) if cfg.momentum_encoder else None
