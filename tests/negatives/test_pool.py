import torch
import torch.nn.functional as F

from dist_contrast.losses import info_nce
from dist_contrast.negatives import NegativesConfig, build_momentum_encoder, build_negative_pool
from dist_contrast.negatives.collective import collect_negatives


def _config(**overrides) -> NegativesConfig:
    raw = {
        "sources": ["batch", "queue", "bank", "mined"],
        "momentum_encoder": True,
        "queue": {"size": 50},
        "bank": {"noise_samples": 5},
        "miner": {"index": "exact", "num_negatives": 6, "extra": 2, "refresh_every": 1,
                  "rebuild_every": 3},
    }
    raw.update(overrides)
    return NegativesConfig.model_validate(raw)


def _run(pool, steps: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    negatives = None
    for step in range(steps):
        ids = torch.randint(0, 40, (8,), generator=generator)
        query = F.normalize(torch.randn(8, 16, generator=generator), dim=1)
        key = F.normalize(torch.randn(8, 16, generator=generator), dim=1)
        labels = ids % 4
        negatives = collect_negatives(pool, query, ids, labels)
        pool.update(key, ids, labels, step)  # one process: the global batch is the local one
    return negatives


def test_composite_merges_every_source():
    pool = build_negative_pool(_config(), dataset_size=40, dim=16, rank=0, world_size=1)
    assert pool.in_batch and set(pool.sources) == {"queue", "bank", "miner"}
    negatives = _run(pool, 4)
    assert negatives is not None
    assert negatives.pool is not None and negatives.pool.shape == (24, 16)
    assert negatives.pool_mask is not None and negatives.pool_mask.shape == (8, 24)
    assert negatives.query_negatives is not None
    assert negatives.query_negatives.shape == (8, 6, 16)
    assert negatives.noise is not None and negatives.noise.shape == (8, 5, 16)
    metrics = negatives.metrics
    expected = 7 + metrics["negatives/pool"] + metrics["negatives/mined"]
    assert metrics["negatives/per_query"] == expected
    assert "miner/search_seconds" in metrics and "queue/filled" in metrics
    # Everything the loss needs fits info_nce's contract.
    query = F.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    loss = info_nce(
        query, F.normalize(torch.randn(8, 16), dim=1), negatives.pool, temperature=0.1,
        negative_mask=negatives.pool_mask, query_negatives=negatives.query_negatives,
        query_negative_mask=negatives.query_negative_mask,
    )
    loss.backward()
    assert torch.isfinite(loss)


def test_bank_only_for_nce():
    cfg = NegativesConfig(sources=["bank"])
    pool = build_negative_pool(cfg, dataset_size=30, dim=8, rank=0, world_size=1)
    negatives = collect_negatives(pool, torch.randn(4, 8), torch.arange(4), None)
    assert negatives.pool is None and negatives.noise is not None
    assert not pool.in_batch


def test_state_round_trip_of_every_source():
    cfg = _config()
    pool = build_negative_pool(cfg, dataset_size=40, dim=16, rank=0, world_size=1, seed=1)
    _run(pool, 5)
    restored = build_negative_pool(cfg, dataset_size=40, dim=16, rank=0, world_size=1, seed=9)
    restored.load_state_dict(pool.state_dict())
    assert restored.queue is not None and pool.queue is not None
    assert torch.equal(restored.queue.keys, pool.queue.keys)
    assert restored.bank is not None and pool.bank is not None
    assert torch.equal(restored.bank.vectors, pool.bank.vectors)
    # Continuing both gives the same negatives (the miner's index is rebuilt from the bank).
    a = _run(pool, 2, seed=5)
    b = _run(restored, 2, seed=5)
    assert a is not None and b is not None
    for field in ("pool", "pool_mask", "query_negative_ids", "noise"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_momentum_encoder_built_from_config():
    encoder = torch.nn.Linear(3, 3)
    assert build_momentum_encoder(NegativesConfig(), encoder) is None
    key_encoder = build_momentum_encoder(_config(momentum=0.99), encoder)
    assert key_encoder is not None and key_encoder.momentum == 0.99


def test_bank_draws_no_noise_unless_the_loss_is_nce() -> None:
    cfg = NegativesConfig(sources=["batch", "bank"], bank={"as_pool": True})
    query = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    ids = torch.arange(4)
    with_noise = build_negative_pool(cfg, dataset_size=32, dim=8, rank=0, world_size=1)
    without = build_negative_pool(
        cfg, dataset_size=32, dim=8, rank=0, world_size=1, nce_noise=False
    )
    assert collect_negatives(with_noise, query, ids, None).noise is not None
    negatives = collect_negatives(without, query, ids, None)
    assert negatives.noise is None and negatives.pool is not None
