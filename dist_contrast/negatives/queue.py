"""MoCo's FIFO queue of the newest K keys, replicated on every worker or sharded across them:
the ``queue`` source, with its settings (``negatives.queue``), checks and memory."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from dist_contrast.negatives.base import Negatives
from dist_contrast.negatives.registry import (
    CheckContext,
    Layout,
    LossNeeds,
    MemoryContext,
    MemoryTerm,
    ResumeContext,
    SourceContext,
    SourceSpec,
    register_source,
)
from dist_contrast.section import Section

NAME = "queue"


class QueueConfig(Section):
    """MoCo's FIFO of the newest ``size`` keys (any size; it need not divide the batch)."""

    size: int = Field(default=65536, ge=1)
    # replicated: every worker holds the whole queue. sharded: worker r holds the global slots
    # s with s % W == r (~size/W rows); the loss then needs the collective sharded LSE.
    layout: Layout = "replicated"
    # An instance seen in an earlier epoch may still sit in the queue; its key is a positive,
    # not a negative, so it is masked out of the query's denominator.
    mask_same_instance: bool = True


class KeyQueue:
    """The newest ``size`` keys of the global key stream, with their dataset ids.

    The queue is one global ring buffer of ``size`` slots: the t-th key ever enqueued (in
    global-batch order) goes to slot ``t % size``. K may be any size; a batch that runs past
    the end wraps around. With ``world_size`` W > 1 and ``sharded=True`` rank r stores only
    the slots s with ``s % W == r`` (local row ``s // W``): every rank sees the same global
    keys in ``update`` and keeps its share, so the union of the shards is exactly the
    replicated queue and no communication is needed to enqueue.

    Shape: keys [size or ~size/W, D], ids [same rows].
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        sharded: bool = False,
        rank: int = 0,
        world_size: int = 1,
        mask_same_instance: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.size = size
        self.dim = dim
        self.sharded = sharded and world_size > 1
        self.rank = rank if self.sharded else 0
        self.world_size = world_size if self.sharded else 1
        self.mask_same_instance = mask_same_instance
        rows = self._local_rows(size)
        self.keys = torch.zeros(rows, dim, device=device)
        self.ids = torch.full((rows,), -1, dtype=torch.long, device=device)
        # Total keys ever enqueued (global); the write pointer is total % size.
        self.total = 0

    def _local_rows(self, global_slots: int) -> int:
        """How many of the global slots [0, global_slots) belong to this rank."""
        return max(0, (global_slots - self.rank + self.world_size - 1) // self.world_size)

    @property
    def filled(self) -> int:
        """Global number of valid slots (size once full)."""
        return min(self.total, self.size)

    def pool(self) -> tuple[Tensor, Tensor]:
        """This rank's valid keys and ids. Slots fill from 0 upwards, so they are a prefix.

        Shape: keys [N_local, D], ids [N_local].
        """
        rows = self._local_rows(self.filled)
        return self.keys[:rows], self.ids[:rows]

    def negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """The queue as a shared pool, with the query's own instance masked.

        Shape: query [B, D], ids [B] -> pool [N, D], pool_mask [B, N] (replicated only).
        """
        if self.filled == 0:
            # Every rank has the same ``total``, so every rank skips the pool together.
            return Negatives(metrics={"queue/filled": 0.0})
        keys, key_ids = self.pool()
        metrics = {"queue/filled": float(self.filled)}
        if self.sharded:
            # The mask of a shard depends on the gathered queries' ids: the sharded LSE
            # builds it from pool_ids (none given: nothing masked).
            return Negatives(pool=keys, pool_ids=key_ids if self.mask_same_instance else None,
                             pool_is_sharded=True, pool_global_rows=self.filled,
                             metrics=metrics)
        mask = None
        if self.mask_same_instance:
            mask = ids.to(key_ids.device)[:, None] == key_ids[None, :]
            metrics["queue/masked_per_query"] = float(mask.sum()) / max(1, mask.shape[0])
        return Negatives(pool=keys, pool_mask=mask, pool_ids=key_ids, metrics=metrics)

    @torch.no_grad()
    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        """Enqueue the global batch's keys, dropping the oldest.

        Shape: keys [W·B, D] (already gathered by the trainer), ids [W·B].
        """
        count = keys.shape[0]
        if count > self.size:
            # Only the newest ``size`` keys of an oversized batch survive anyway.
            self.total += count - self.size
            keys, ids = keys[-self.size :], ids[-self.size :]
            count = self.size
        slots = (self.total + torch.arange(count, device=self.keys.device)) % self.size
        mine = slots % self.world_size == self.rank
        rows = slots[mine] // self.world_size
        self.keys[rows] = keys.to(self.keys.device, self.keys.dtype)[mine]
        self.ids[rows] = ids.to(self.ids.device)[mine]
        self.total += count

    def state_dict(self) -> dict[str, Any]:
        return {
            "keys": self.keys.clone(),
            "ids": self.ids.clone(),
            "total": self.total,
            "size": self.size,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != self.size:
            raise ValueError(f"checkpoint queue size {state['size']} != configured {self.size}")
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(
                f"checkpoint holds queue shard {state['rank']}/{state['world_size']}, this worker "
                f"is {self.rank}/{self.world_size}; resume with the same number of workers"
            )
        self.keys.copy_(state["keys"])
        self.ids.copy_(state["ids"])
        self.total = int(state["total"])


# ----------------------------------------------------------------------------- the source


def _build(settings: QueueConfig, context: SourceContext) -> KeyQueue:
    return KeyQueue(
        settings.size,
        context.dim,
        sharded=settings.layout == "sharded",
        rank=context.rank,
        world_size=context.world_size,
        mask_same_instance=settings.mask_same_instance,
        device=context.device,
    )


def _needs_momentum_keys(settings: QueueConfig, context: CheckContext) -> None:
    if context.configured(NAME) and not context.negatives.momentum_encoder:
        raise ValueError(
            "negatives.sources has 'queue' but negatives.momentum_encoder is false; the queue "
            "holds momentum-encoder keys, set negatives.momentum_encoder=true"
        )


def _sharded_needs_the_loss(settings: QueueConfig, context: CheckContext) -> None:
    loss = context.loss
    if loss is None or not context.configured(NAME) or settings.layout != "sharded":
        return
    if not loss.sharded_pool:
        raise ValueError(
            f"negatives.queue.layout=sharded needs a loss that joins a sharded pool's "
            f"log-sum-exp, which loss.name={loss.name} cannot; use layout=replicated or info_nce"
        )


def _memory(settings: QueueConfig, context: MemoryContext) -> list[MemoryTerm]:
    """The queue and the copy a checkpoint makes of it: keys float32 + ids int64 per row."""
    size, dim, workers = settings.size, context.dim, context.workers
    sharded = settings.layout == "sharded" and workers > 1
    rows = -(-size // workers) if sharded else size
    layout = f", sharded over {workers} workers" if sharded else ""
    what = f"the MoCo queue (negatives.queue.size={size:,} × {dim} dims{layout})"
    fix = "lower negatives.queue.size"
    return [MemoryTerm(what, rows * (4 * dim + 8), fix, on_device=True),
            MemoryTerm(f"the checkpoint copy of {what}", rows * (4 * dim + 8), fix, True)]


def _sharding(settings: QueueConfig, loss: LossNeeds) -> tuple[str, QueueConfig] | None:
    if not loss.sharded_pool or settings.layout != "replicated":
        return None
    return "negatives.queue.layout=sharded", settings.model_copy(update={"layout": "sharded"})


def _resume_check(
    settings: QueueConfig, state: dict[str, Any], context: ResumeContext
) -> str | None:
    size, dim = int(state["size"]), int(state["keys"].shape[1])
    if size != settings.size:
        return (f"has a queue of {size:,} keys, this config has "
                f"negatives.queue.size={settings.size}; set negatives.queue.size={size}")
    if dim != context.dim:
        return (f"has queue keys of {dim} dims, this config has "
                f"model.embedding_dim={context.dim}; set model.embedding_dim={dim}")
    sharded = int(state["world_size"]) > 1
    if sharded != (settings.layout == "sharded" and context.workers > 1):
        layout = "sharded" if sharded else "replicated"
        return (f"has a {layout} queue, this config has "
                f"negatives.queue.layout={settings.layout}; set negatives.queue.layout={layout}")
    return None


register_source(NAME, SourceSpec(
    key=NAME, build=_build, settings=QueueConfig, title="the MoCo queue",
    checks=(_needs_momentum_keys, _sharded_needs_the_loss),
    shared_pool=lambda settings: "'queue'",
    memory=_memory, sharding=_sharding, resume_check=_resume_check,
    describe=lambda settings, context: f"queue ({settings.size:,} keys, {settings.layout})",
))
