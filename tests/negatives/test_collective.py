"""Sharded pool LSE and top-k merge: 2 gloo processes against the single-process result."""

import torch
import torch.nn.functional as F

from dist_contrast import dist
from dist_contrast.losses import info_nce
from dist_contrast.negatives import KeyQueue
from dist_contrast.negatives.collective import merge_topk, sharded_pool_lse
from tests.gloo import run_distributed
from tests.negatives._portable import portable, tensors

WORLD, BATCH, DIM, QUEUE = 2, 4, 8, 11


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    total = WORLD * BATCH
    return {
        "query": F.normalize(torch.randn(total, DIM, generator=generator), dim=1),
        "key": F.normalize(torch.randn(total, DIM, generator=generator), dim=1),
        # Ids 0..7 are the queries'; the stream re-enqueues some of them (an earlier epoch).
        "ids": torch.arange(total),
        "stream": F.normalize(torch.randn(5, total, DIM, generator=generator), dim=1),
        "stream_ids": torch.randint(0, 3 * total, (5, total), generator=generator),
    }


def _filled_queue(data: dict[str, torch.Tensor], sharded: bool, rank: int, world: int) -> KeyQueue:
    queue = KeyQueue(QUEUE, DIM, sharded=sharded, rank=rank, world_size=world)
    for step in range(data["stream"].shape[0]):
        queue.update(data["stream"][step], data["stream_ids"][step], None, step)
    return queue


def _loss_and_grads(sharded: bool, tile_size: int | None) -> dict[str, torch.Tensor]:
    data = _data()
    rank, world = dist.rank(), dist.world_size()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    query = data["query"][rows].clone().requires_grad_(True)
    tau = torch.tensor(0.1, requires_grad=True)
    ids = data["ids"][rows]
    queue = _filled_queue(data, sharded, rank, world)
    negatives = queue.negatives(query, ids, None)
    if sharded:
        lse = sharded_pool_lse(query, negatives, ids, temperature=tau, tile_size=tile_size)
        loss = info_nce(query, data["key"][rows], temperature=tau, in_batch=False, negative_lse=lse)
    else:
        loss = info_nce(
            query, data["key"][rows], negatives.pool, temperature=tau, in_batch=False,
            negative_mask=negatives.pool_mask,
        )
    loss.backward()
    assert query.grad is not None and tau.grad is not None
    return {"loss": loss.detach(), "query_grad": query.grad, "tau_grad": tau.grad}


def _both_layouts() -> tuple:
    return portable((_loss_and_grads(False, None), _loss_and_grads(True, 3)))


def test_sharded_queue_matches_replicated_and_single_process():
    data = _data()
    # Single process: the whole batch against the whole queue.
    query = data["query"].clone().requires_grad_(True)
    tau = torch.tensor(0.1, requires_grad=True)
    queue = _filled_queue(data, False, 0, 1)
    negatives = queue.negatives(query, data["ids"], None)
    assert negatives.pool_mask is not None and negatives.pool_mask.any(), "test needs masking"
    loss = info_nce(
        query, data["key"], negatives.pool, temperature=tau, in_batch=False,
        negative_mask=negatives.pool_mask,
    )
    loss.backward()
    assert query.grad is not None and tau.grad is not None

    results = tensors(run_distributed(_both_layouts, world_size=WORLD))
    for rank, (replicated, sharded) in enumerate(results):
        for key in ("loss", "query_grad", "tau_grad"):
            torch.testing.assert_close(sharded[key], replicated[key], atol=1e-5, rtol=1e-5)
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        # Each rank averages over B rows, the single process over W·B.
        torch.testing.assert_close(
            sharded["query_grad"] / WORLD, query.grad[rows], atol=1e-5, rtol=1e-5
        )
    mean_loss = sum(sharded["loss"] for _, sharded in results) / WORLD
    mean_tau_grad = sum(sharded["tau_grad"] for _, sharded in results) / WORLD
    torch.testing.assert_close(mean_loss, loss.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mean_tau_grad, tau.grad, atol=1e-5, rtol=1e-5)


def test_sharded_lse_single_process_equals_logsumexp():
    data = _data()
    query = data["query"].clone().requires_grad_(True)
    queue = KeyQueue(QUEUE, DIM, sharded=True, rank=0, world_size=2)  # shard 0 of 2 ...
    queue.update(data["stream"][0], data["stream_ids"][0], None, 0)
    negatives = queue.negatives(query, data["ids"], None)
    # ... but with no process group the shard is the whole pool this process sees.
    lse = sharded_pool_lse(query, negatives, data["ids"], temperature=0.2)
    pool, pool_ids = negatives.pool, negatives.pool_ids
    assert pool is not None and pool_ids is not None
    logits = (query @ pool.T / 0.2).masked_fill(data["ids"][:, None] == pool_ids, float("-inf"))
    expected = torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(lse, expected)
    (grad,) = torch.autograd.grad(lse.sum(), query)
    (expected_grad,) = torch.autograd.grad(expected.sum(), query)
    torch.testing.assert_close(grad, expected_grad)


def _shard_candidates(shard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shard ``shard``'s sorted top-4 for all 6 gathered queries, ids offset by 100·shard."""
    scores = torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(3))[shard]
    sorted_scores, order = scores.sort(dim=1, descending=True)
    ids = order + 100 * shard
    if shard == 0:
        # A missing result (id -1) must never win, whatever its score.
        ids[0, -1], sorted_scores[0, -1] = -1, 5.0
    return sorted_scores, ids


def _merge_on_ranks() -> tuple:
    return portable(merge_topk(*_shard_candidates(dist.rank()), local_rows=3))


def test_merge_topk_takes_best_of_both_shards():
    results = tensors(run_distributed(_merge_on_ranks))
    scores = torch.cat([_shard_candidates(0)[0], _shard_candidates(1)[0]], dim=1)
    ids = torch.cat([_shard_candidates(0)[1], _shard_candidates(1)[1]], dim=1)
    scores = scores.masked_fill(ids < 0, float("-inf"))
    for rank, (best, best_ids) in enumerate(results):
        rows = slice(3 * rank, 3 * rank + 3)
        expected, position = scores[rows].topk(4, dim=1)
        torch.testing.assert_close(best, expected)
        assert torch.equal(best_ids, ids[rows].gather(1, position))
        assert (best_ids >= 0).all()
