import os

import pytest
import torch
from torch import nn

from dist_contrast import dist
from dist_contrast.negatives import MomentumEncoder
from dist_contrast.negatives.collective import batch_shuffle, batch_unshuffle
from tests.gloo import run_distributed
from tests.negatives._portable import portable, tensors


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_update_matches_formula_and_copies_buffers():
    torch.manual_seed(0)
    query_encoder = _net()
    key_encoder = MomentumEncoder(query_encoder, momentum=0.9)
    assert all(not p.requires_grad for p in key_encoder.parameters())
    before = {n: p.clone() for n, p in key_encoder.encoder.named_parameters()}
    with torch.no_grad():
        for p in query_encoder.parameters():
            p.add_(torch.randn_like(p))
    query_encoder(torch.randn(16, 4))  # train-mode forward moves the BN running stats
    key_encoder.update(query_encoder)
    for name, param in query_encoder.named_parameters():
        expected = 0.9 * before[name] + 0.1 * param
        torch.testing.assert_close(dict(key_encoder.encoder.named_parameters())[name], expected)
    for name, buffer in query_encoder.named_buffers():
        assert torch.equal(dict(key_encoder.encoder.named_buffers())[name], buffer)


def test_forward_has_no_grad_and_state_round_trips():
    key_encoder = MomentumEncoder(_net(), momentum=0.99)
    out = key_encoder(torch.randn(4, 4))
    assert not out.requires_grad
    restored = MomentumEncoder(_net(), momentum=0.99)
    restored.load_state_dict(key_encoder.state_dict())
    for a, b in zip(restored.state_dict().values(), key_encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_momentum_of_one_is_refused():
    # ZeRO stage 3 (which would partition the parameters the EMA reads) is refused by the
    # config schema: tests/test_config.py.
    with pytest.raises(ValueError, match="momentum"):
        MomentumEncoder(_net(), momentum=1.0)


def _shuffle_round_trip() -> tuple:
    torch.manual_seed(0)  # the same key encoder on both ranks
    key_encoder = nn.Linear(4, 3)
    rows = torch.arange(5, dtype=torch.float32)[:, None] + 10 * dist.rank()
    local = rows.expand(5, 4).contiguous()
    shuffled, unshuffle = batch_shuffle(local, torch.Generator().manual_seed(1))
    with torch.no_grad():
        keys = batch_unshuffle(key_encoder(shuffled), unshuffle)
        direct = key_encoder(local)
    return portable((keys, direct, shuffled[:, 0]))


def test_shuffle_bn_round_trip_on_two_workers():
    results = tensors(run_distributed(_shuffle_round_trip))
    for keys, direct, _ in results:
        torch.testing.assert_close(keys, direct)
    seen = torch.cat([shuffled for _, _, shuffled in results]).sort().values
    assert torch.equal(seen, torch.tensor([0.0, 1, 2, 3, 4, 10, 11, 12, 13, 14]))
    # The permutation really mixes the ranks (seeded: not the identity split).
    assert not torch.equal(results[0][2], torch.arange(5.0))


def _deepspeed_momentum(
    stage: int,
) -> tuple:
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())  # what a launcher would set
    import deepspeed

    torch.manual_seed(0)
    model = _net()
    config = {
        "train_batch_size": 8,
        "optimizer": {"type": "SGD", "params": {"lr": 0.5}},
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config
    )
    key_encoder = MomentumEncoder(engine.module, momentum=0.5)
    before = [p.clone() for p in key_encoder.encoder.parameters()]
    torch.manual_seed(1 + dist.rank())  # different data per rank
    loss = engine(torch.randn(4, 4)).pow(2).sum()
    engine.backward(loss)
    engine.step()
    key_encoder.update(engine.module)
    query_params = list(engine.module.parameters())
    expected = [0.5 * b + 0.5 * q.detach() for b, q in zip(before, query_params, strict=True)]
    return portable((list(key_encoder.encoder.parameters()), expected, before))


@pytest.mark.parametrize("stage", [0, 2])
def test_momentum_update_under_deepspeed_zero(stage):
    results = tensors(run_distributed(_deepspeed_momentum, stage))
    for actual, expected, before in results:
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e)
        assert any(not torch.equal(a, b) for a, b in zip(actual, before, strict=True))
    # ZeRO 0-2 keep full, identical parameters on every rank: so are the key encoders.
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(a, b)
