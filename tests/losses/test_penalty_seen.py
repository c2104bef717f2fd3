"""The relative penalty over exactly the negatives a pool loss counts, checked against the
loss's own gradient: for one query, ∂L/∂k_j = (∂L/∂s_j)·q, so each negative's share of the push
is |∂L/∂k_j| / |q| normalised over the negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_contrast import losses
from dist_contrast.analysis import penalty_summary
from dist_contrast.negatives.base import Negatives
from dist_contrast.objectives import ObjectiveInputs, get_objective


def _one_query(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(1, 6, generator=generator, dtype=torch.float64), dim=1)
    keys = F.normalize(torch.randn(9, 6, generator=generator, dtype=torch.float64), dim=1)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[0, 4] = True  # a masked key (say, a same-label false negative)
    return query, keys, mask


def _push_shares(loss: torch.Tensor, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, keys)
    push = grad.norm(dim=1) / query.norm()
    push[0] = 0.0  # the positive is pulled, not pushed
    return push / push.sum()


@pytest.mark.parametrize(("name", "options"), [
    ("info_nce", {}), ("hard_info_nce", {"top_k": 3}), ("hard_info_nce", {"quantile": 0.5}),
    ("simple", {}), ("hard_simple", {"top_k": 3}),
])
def test_the_penalty_is_each_counted_negatives_share_of_the_gradient(name, options):
    query, keys, mask = _one_query()
    keys.requires_grad_(True)
    compute = {"info_nce": losses.info_nce, "hard_info_nce": losses.hard_info_nce,
               "simple": losses.simple_loss, "hard_simple": losses.hard_simple_loss}[name]
    tau = {"temperature": 0.3} if get_objective(name).uses_temperature else {}
    loss = compute(query, keys, positive_index=torch.tensor([0]), key_mask=mask, **tau,
                   **options)
    expected = _push_shares(loss, keys, query)
    objective = get_objective(name)
    penalty = losses.relative_penalty_seen(
        query, keys.detach(), temperature=0.3, softmax=objective.uses_temperature,
        positive_index=torch.tensor([0]), key_mask=mask, **options,
    )
    # One column per key; the positive's and the masked key's count for nothing.
    torch.testing.assert_close(penalty[0], expected, rtol=1e-9, atol=1e-12)
    assert penalty[0, 0] == 0 and penalty[0, 4] == 0
    # The objective's declared penalty is this function with the loss's own options.
    assert objective.penalty is not None
    inputs = ObjectiveInputs(query=query, key=keys.detach(), positive_index=torch.tensor([0]),
                             negatives=Negatives())
    declared = objective.penalty(inputs, 0.3, in_batch=True, tile_size=4, **options)
    unmasked = losses.relative_penalty_seen(
        query, keys.detach(), temperature=0.3, softmax=objective.uses_temperature,
        positive_index=torch.tensor([0]), **options)
    torch.testing.assert_close(declared, unmasked)


def test_the_entropy_is_the_softmax_entropy_over_the_counted_entries_on_a_hand_example():
    # One query, three negatives counted (similarities 0.5, 0.1, 0.1) and one masked.
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sims = [0.9, 0.5, 0.1, 0.1, 0.7]
    keys = torch.tensor([[s, math.sqrt(1 - s * s)] for s in sims], dtype=torch.float64)
    mask = torch.tensor([[False, False, False, False, True]])
    r = losses.relative_penalty_seen(query, keys, temperature=0.5, key_mask=mask)
    e = [math.exp(s / 0.5) for s in (0.5, 0.1, 0.1)]
    p = [x / sum(e) for x in e]
    # Columns: the positive (0), the three counted negatives, the masked key (0).
    torch.testing.assert_close(r, torch.tensor([[0.0, *p, 0.0]], dtype=torch.float64))
    summary = penalty_summary(r, top_k=1)
    assert summary["penalty_entropy"] == pytest.approx(-sum(x * math.log(x) for x in p))
    assert summary["penalty_entropy_max"] == pytest.approx(math.log(3))
    assert summary["top1_penalty_share"] == pytest.approx(p[0])
    assert summary["negatives_counted"] == 3
    # The hard loss's truncated set (top 1): all of the penalty on one negative, H = 0.
    hard = penalty_summary(losses.relative_penalty_seen(query, keys, temperature=0.5,
                                                        key_mask=mask, top_k=1), top_k=1)
    assert hard["penalty_entropy"] == 0 and hard["negatives_counted"] == 1
    # The simple losses weigh each counted negative alike: H = log n.
    simple = penalty_summary(losses.relative_penalty_seen(query, keys, temperature=0.5,
                                                          key_mask=mask, softmax=False), top_k=1)
    assert simple["penalty_entropy"] == pytest.approx(math.log(3))


def test_pools_and_per_query_negatives_are_columns_too():
    query, keys, _ = _one_query(1)
    generator = torch.Generator().manual_seed(2)
    pool = F.normalize(torch.randn(5, 6, generator=generator, dtype=torch.float64), dim=1)
    mined = F.normalize(torch.randn(1, 3, 6, generator=generator, dtype=torch.float64), dim=2)
    pool_mask = torch.zeros(1, 5, dtype=torch.bool)
    pool_mask[0, 0] = True
    r = losses.relative_penalty_seen(query, keys, pool, temperature=0.2, in_batch=False,
                                     negative_mask=pool_mask, query_negatives=mined)
    assert r.shape == (1, 8)  # no key columns without in-batch negatives; 5 + 3
    logits = torch.cat([query @ pool[1:].T, (mined[0] @ query.T).T], dim=1) / 0.2
    torch.testing.assert_close(r[0, 1:], torch.softmax(logits[0], dim=0))
    assert r[0, 0] == 0
