"""Per-rank shards of one shared permutation per epoch, and the loader built on them."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from dist_contrast.data.seeding import mix_seed

_SHUFFLE_STREAM = 0x5348_5546  # "SHUF"


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's order of all ids; every rank computes the same one from (seed, epoch).

    Shape: [num_samples] int64.
    """
    rng = torch.Generator().manual_seed(mix_seed(seed, _SHUFFLE_STREAM, epoch))
    return torch.randperm(num_samples, generator=rng)


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of the epoch permutation: exactly ``num_samples // world_size`` ids.

    ``start`` skips the shard's first ids (mid-epoch resume).

    The ``num_samples % world_size`` ids at the end of the permutation (fewer than W) are left
    out of the epoch, so every rank gets the same count: the all-gather of the global batch
    needs equal batch shapes on all ranks. The permutation changes each epoch, so the left-out
    ids change too and no id is left out for good.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot fill {world_size} ranks")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start = start

    @property
    def shard_size(self) -> int:
        """Ids this rank gets in a whole epoch: ``num_samples // world_size``."""
        return self.num_samples // self.world_size

    def __len__(self) -> int:
        return max(0, self.shard_size - self.start)

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch)
        # Strided, like DistributedSampler: rank r takes positions r, r + W, r + 2W, ...
        shard = order[: self.shard_size * self.world_size][self.rank :: self.world_size]
        return iter(shard[self.start :].tolist())


class OwnShardSampler(Sampler[int]):
    """For a dataset that holds only this rank's rows: an epoch's order of its ``num_local``
    positions, of which the first ``per_rank`` (the same count on every rank, for the equal
    batch shapes the all-gather needs). ``start`` skips the first ones (mid-epoch resume).

    The order depends on (seed, rank, epoch); the left-out positions change each epoch.
    """

    def __init__(self, num_local: int, per_rank: int, *, rank: int, seed: int, epoch: int,
                 start: int = 0) -> None:
        if not 0 < per_rank <= num_local:
            raise ValueError(f"{per_rank} rows per rank cannot come from {num_local} held rows")
        self.num_local = num_local
        self.per_rank = per_rank
        self.seed = mix_seed(seed, rank)
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.num_local, self.seed, self.epoch)[: self.per_rank]
        return iter(order[self.start :].tolist())


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = False,
    skip_batches: int = 0,
) -> DataLoader[Any]:
    """A loader over this rank's shard of ``dataset`` for one epoch.

    Calls ``dataset.set_epoch(epoch)`` when the dataset has it, so the views are the epoch's;
    build a new loader every epoch. The final short batch is kept (``drop_last=False``): it
    has the same size on every rank, and ``len(loader)`` is equal on every rank. Pass
    ``drop_last=True`` when a batch of one would break the model (BatchNorm in training).
    ``skip_batches`` resumes mid-epoch: the first batches are skipped without being loaded,
    and the rest are exactly those of an uninterrupted epoch.

    Shape: batches of ``{"view1": [B, *input_shape], "view2": [B, *input_shape],
    "index": [B] int64, "label": [B] int64}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not isinstance(dataset, Sized):
        raise TypeError("make_loader needs a dataset with __len__")
    set_epoch = getattr(dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    # A dataset holding only this rank's rows (a streamed file) says how many it holds and
    # how many each rank takes; the others hold every row and take a shard of them.
    own: tuple[int, int] | None = getattr(dataset, "own_shard", None)
    sampler: Sampler[int] = (
        OwnShardSampler(own[0], own[1], rank=rank, seed=seed, epoch=epoch,
                        start=skip_batches * batch_size)
        if own is not None
        else ShardSampler(len(dataset), rank=rank, world_size=world_size, seed=seed,
                          epoch=epoch, start=skip_batches * batch_size)
    )
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
        num_workers=num_workers,
        # A dataset may batch its items itself (text pairs: lists of strings).
        collate_fn=getattr(dataset, "collate", None),
    )
