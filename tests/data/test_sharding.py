import pytest
import torch
from torch.utils.data import Dataset

from dist_contrast import dist
from dist_contrast.data import DataConfig, build_data, epoch_permutation, make_loader
from tests.gloo import run_distributed


class _Ids(Dataset):
    """Items are their own ids: enough to check sharding."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _shards(size, world_size, batch_size, seed, epoch):
    dataset = _Ids(size)
    loaders = [
        make_loader(
            dataset, batch_size=batch_size, rank=r, world_size=world_size, seed=seed, epoch=epoch
        )
        for r in range(world_size)
    ]
    assert dataset.epochs == [epoch] * world_size
    return loaders, [[batch.tolist() for batch in loader] for loader in loaders]


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("size", [101, 99, 7])
def test_every_sample_in_exactly_one_shard(world_size, size):
    loaders, shards = _shards(size, world_size, batch_size=8, seed=4, epoch=1)
    per_rank = size // world_size
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen)) == per_rank * world_size  # no duplicates
    left_out = set(range(size)) - set(seen)
    assert len(left_out) == size % world_size < world_size
    # The left-out ids are the tail of that epoch's permutation, the same on every rank.
    assert left_out == set(epoch_permutation(size, 4, 1)[per_rank * world_size :].tolist())
    assert len({len(loader) for loader in loaders}) == 1
    for shard in shards:  # same batch sizes on every rank, short final batch kept
        assert [len(b) for b in shard] == [len(b) for b in shards[0]]
        assert sum(len(b) for b in shard) == per_rank


def test_shuffle_changes_each_epoch_and_left_out_ids_rotate():
    left_out = set()
    orders = []
    for epoch in range(20):
        _, shards = _shards(10, 3, batch_size=4, seed=0, epoch=epoch)
        seen = {i for shard in shards for batch in shard for i in batch}
        left_out |= set(range(10)) - seen
        orders.append(shards[0])
    assert len(left_out) > 3  # not the same id left out every epoch
    assert orders[0] != orders[1]


def test_same_seed_epoch_same_shards_and_skip_batches_resumes():
    _, first = _shards(50, 2, batch_size=6, seed=1, epoch=3)
    _, again = _shards(50, 2, batch_size=6, seed=1, epoch=3)
    assert first == again
    resumed = make_loader(
        _Ids(50), batch_size=6, rank=1, world_size=2, seed=1, epoch=3, skip_batches=2
    )
    assert [b.tolist() for b in resumed] == first[1][2:]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="rank 2"):
        make_loader(_Ids(10), batch_size=2, rank=2, world_size=2, seed=0, epoch=0)
    with pytest.raises(ValueError, match="cannot fill"):
        make_loader(_Ids(1), batch_size=2, rank=0, world_size=2, seed=0, epoch=0)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_Ids(10), batch_size=0, rank=0, world_size=1, seed=0, epoch=0)


def _rank_indices(epoch: int) -> tuple[int, list[int], int, list[int]]:
    bundle = build_data(DataConfig(num_samples=625, dim=8, signal_dim=2))
    loader = make_loader(
        bundle.train,
        batch_size=32,
        rank=dist.rank(),
        world_size=dist.world_size(),
        seed=7,
        epoch=epoch,
    )
    indices = torch.cat([batch["index"] for batch in loader])
    # The all-gather the trainer does must work: equal shapes on both ranks.
    gathered = dist.all_gather_no_grad(indices)
    return dist.rank(), indices.tolist(), len(loader), gathered.tolist()


def test_two_gloo_ranks_get_disjoint_equal_shards():
    results = run_distributed(_rank_indices, 2, world_size=2)
    (rank0, ids0, len0, gathered0), (rank1, ids1, len1, gathered1) = results
    assert (rank0, rank1) == (0, 1)
    assert len(ids0) == len(ids1) == 500 // 2 and len0 == len1
    assert not set(ids0) & set(ids1)
    assert gathered0 == gathered1 == ids0 + ids1
    single = [
        make_loader(
            build_data(DataConfig(num_samples=625, dim=8, signal_dim=2)).train,
            batch_size=32,
            rank=r,
            world_size=2,
            seed=7,
            epoch=2,
        )
        for r in range(2)
    ]
    assert [torch.cat([b["index"] for b in loader]).tolist() for loader in single] == [ids0, ids1]
