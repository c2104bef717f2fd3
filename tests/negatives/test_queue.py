import torch

from dist_contrast import dist
from dist_contrast.negatives import KeyQueue
from tests.gloo import run_distributed


def _keys(start: int, count: int, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + count)
    return ids[:, None].float().expand(count, dim).clone(), ids


def test_fifo_with_wraparound_when_size_does_not_divide_batch():
    queue = KeyQueue(size=7, dim=3)
    stream = []
    for step in range(5):
        keys, ids = _keys(3 * step, 3)
        queue.update(keys, ids, None, step)
        stream.extend(ids.tolist())
        pool_keys, pool_ids = queue.pool()
        newest = stream[-7:]
        assert sorted(pool_ids.tolist()) == sorted(newest)
        assert torch.equal(pool_keys[:, 0].long(), pool_ids)
    assert queue.filled == 7


def test_batch_larger_than_queue_keeps_newest():
    queue = KeyQueue(size=4, dim=3)
    keys, ids = _keys(0, 10)
    queue.update(keys, ids, None, 0)
    assert sorted(queue.pool()[1].tolist()) == [6, 7, 8, 9]
    keys, ids = _keys(10, 2)
    queue.update(keys, ids, None, 1)
    assert sorted(queue.pool()[1].tolist()) == [8, 9, 10, 11]


def test_empty_queue_gives_no_pool():
    queue = KeyQueue(size=4, dim=3)
    assert queue.negatives(torch.randn(2, 3), torch.arange(2), None).pool is None


def test_same_instance_is_masked():
    queue = KeyQueue(size=8, dim=3)
    keys, ids = _keys(0, 6)
    queue.update(keys, ids, None, 0)
    negatives = queue.negatives(torch.randn(3, 3), torch.tensor([2, 5, 40]), None)
    assert negatives.pool is not None and negatives.pool_mask is not None
    assert negatives.pool_mask.shape == (3, 6)
    pool_ids = negatives.pool_ids
    assert pool_ids is not None
    assert negatives.pool_mask[0].tolist() == (pool_ids == 2).tolist()
    assert negatives.pool_mask[1].sum() == 1 and negatives.pool_mask[2].sum() == 0
    unmasked = KeyQueue(size=8, dim=3, mask_same_instance=False)
    unmasked.update(keys, ids, None, 0)
    assert unmasked.negatives(torch.randn(1, 3), torch.tensor([2]), None).pool_mask is None


def test_a_sharded_shard_carries_its_ids_only_when_it_masks_and_its_global_size():
    """The sharded LSE masks a query's own instance through the shard's pool_ids: a queue
    with mask_same_instance=false gives none, so nothing is masked (the step passes nothing
    else), and the count metric reads the whole queue's rows from pool_global_rows."""
    from dist_contrast.negatives.collective import sharded_pool_lse

    keys, ids = _keys(0, 6)
    keys = torch.nn.functional.normalize(keys + torch.randn(6, 3), dim=1)
    query, query_ids = torch.nn.functional.normalize(torch.randn(4, 3), dim=1), ids[:4]
    for mask in (True, False):
        queue = KeyQueue(size=8, dim=3, sharded=True, rank=0, world_size=2,
                         mask_same_instance=mask)
        queue.update(keys, ids, None, 0)
        negatives = queue.negatives(query, query_ids, None)
        assert negatives.pool_is_sharded and negatives.pool_global_rows == 6
        assert (negatives.pool_ids is not None) == mask
        shard, shard_ids = queue.pool()  # rank 0 of 2: the even slots
        logits = query @ shard.T / 0.2
        if mask:
            logits = logits.masked_fill(query_ids[:, None] == shard_ids[None, :], float("-inf"))
        lse = sharded_pool_lse(query, negatives, query_ids, temperature=0.2)
        torch.testing.assert_close(lse, torch.logsumexp(logits, dim=1))


def test_state_round_trip():
    queue = KeyQueue(size=5, dim=3)
    for step in range(3):
        queue.update(*_keys(2 * step, 2), None, step)
    restored = KeyQueue(size=5, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert restored.total == queue.total
    assert torch.equal(restored.keys, queue.keys) and torch.equal(restored.ids, queue.ids)
    restored.update(*_keys(100, 2), None, 3)
    queue.update(*_keys(100, 2), None, 3)
    assert torch.equal(restored.pool()[1], queue.pool()[1])


def _fill(queue: KeyQueue) -> list[int]:
    torch.manual_seed(dist.rank())
    for step in range(4):
        local = torch.randn(3, 4)
        local_ids = torch.arange(3) + 3 * dist.rank() + 100 * step
        # The trainer gathers the global batch; every rank feeds the same keys.
        keys = dist.all_gather_no_grad(local)
        ids = dist.all_gather_no_grad(local_ids)
        queue.update(keys, ids, None, step)
    return queue.pool()[1].tolist()


def _queues_on_ranks() -> tuple[list[int], list[int]]:
    rank, world = dist.rank(), dist.world_size()
    replicated = _fill(KeyQueue(size=11, dim=4, rank=rank, world_size=world))
    sharded = _fill(KeyQueue(size=11, dim=4, sharded=True, rank=rank, world_size=world))
    return replicated, sharded


def test_replicated_identical_and_sharded_union_on_two_workers():
    (replicated0, shard0), (replicated1, shard1) = run_distributed(_queues_on_ranks)
    assert replicated0 == replicated1 and len(replicated0) == 11
    assert len(shard0) == 6 and len(shard1) == 5
    assert sorted(shard0 + shard1) == sorted(replicated0)
