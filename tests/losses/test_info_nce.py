"""InfoNCE: against a loop re-statement, PML's NT-Xent, gradcheck, tiled = untiled, masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss

from dist_contrast.losses import (
    combine_partials,
    info_nce,
    partials_lse,
    pool_partials,
)
from tests.losses.reference import assert_relative, info_nce_loop


def _inputs(batch: int, dim: int, *, keys: int, pool: int, mined: int, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        raw = torch.randn(*shape, generator=gen, dtype=dtype)
        return torch.nn.functional.normalize(raw, dim=-1)

    return {
        "query": unit(batch, dim),
        "key": unit(keys, dim),
        "negatives": unit(pool, dim),
        "query_negatives": unit(batch, mined, dim),
        "negative_mask": torch.rand(batch, pool, generator=gen) < 0.3,
        "query_negative_mask": torch.rand(batch, mined, generator=gen) < 0.3,
        "key_mask": torch.rand(batch, keys, generator=gen) < 0.2,
        "positive_index": torch.randperm(keys, generator=gen)[:batch],
        "negative_lse": torch.randn(batch, generator=gen, dtype=dtype),
    }


@pytest.mark.parametrize("tile_size", [None, 3])
@pytest.mark.parametrize(("batch", "dim", "tau"), [(1, 3, 0.1), (4, 8, 0.07), (6, 5, 1.0)])
def test_matches_loop_with_every_source(batch: int, dim: int, tau: float, tile_size: int | None):
    x = _inputs(batch, dim, keys=batch + 3, pool=9, mined=4, seed=batch)
    loss = info_nce(**x, temperature=tau, tile_size=tile_size)
    expected = info_nce_loop(
        x["query"].double().numpy(), x["key"].double().numpy(), tau,
        **{k: v.double().numpy() if v.is_floating_point() else v.numpy()
           for k, v in x.items() if k not in ("query", "key")},
    )
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("batch", "tau"), [(3, 0.2), (5, 0.5)])
def test_plain_in_batch_and_in_batch_false(batch: int, tau: float):
    x = _inputs(batch, 6, keys=batch, pool=5, mined=1, seed=7)
    q, k = x["query"], x["key"]
    plain = info_nce(q, k, temperature=tau)
    assert plain.item() == pytest.approx(info_nce_loop(q.double().numpy(), k.double().numpy(), tau))
    pool_only = info_nce(q, k, x["negatives"], temperature=tau, in_batch=False)
    expected = info_nce_loop(q.double().numpy(), k.double().numpy(), tau, in_batch=False,
                             negatives=x["negatives"].double().numpy())
    assert pool_only.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_matches_pytorch_metric_learning_ntxent(tau: float):
    # SimCLR form: 2B views, each view's positive is its partner, every other view a negative.
    # PML's NT-Xent averages over positive pairs; here each view is the anchor of one pair.
    batch = 6
    views = torch.nn.functional.normalize(torch.randn(2 * batch, 16), dim=1)
    labels = torch.arange(batch).repeat(2)
    partner = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    ours = info_nce(views, views, temperature=tau, positive_index=partner,
                    key_mask=torch.eye(2 * batch, dtype=torch.bool))
    theirs = NTXentLoss(temperature=tau)(views, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("tile_size", [None, 1, 2, 5])
def test_gradcheck_float64(tile_size: int | None):
    x = _inputs(3, 4, keys=5, pool=4, mined=3, seed=3, dtype=torch.float64)
    fixed = {k: v for k, v in x.items() if k not in ("query", "key", "negative_lse")}
    tau = torch.tensor(0.3, dtype=torch.float64)

    def loss(q, k, t, lse):
        return info_nce(q, k, temperature=t, negative_lse=lse, tile_size=tile_size, **fixed)

    args = tuple(v.clone().requires_grad_() for v in (x["query"], x["key"], tau, x["negative_lse"]))
    assert torch.autograd.gradcheck(loss, args)


@pytest.mark.parametrize("tile_size", [1, 3, 4, 7, 64])
@pytest.mark.parametrize("key_needs_grad", [True, False])
def test_tiled_equals_untiled(tile_size: int, key_needs_grad: bool):
    x = _inputs(6, 8, keys=12, pool=17, mined=5, seed=11)
    tau_value = 0.1

    def run(tile: int | None) -> tuple[torch.Tensor, ...]:
        q = x["query"].clone().requires_grad_()
        k = x["key"].clone().requires_grad_(key_needs_grad)
        tau = torch.tensor(tau_value, requires_grad=True)
        rest = {n: v for n, v in x.items() if n not in ("query", "key")}
        loss = info_nce(q, k, temperature=tau, tile_size=tile, **rest)
        inputs = [q, tau, k] if key_needs_grad else [q, tau]
        return (loss, *torch.autograd.grad(loss, inputs))

    for tiled, untiled in zip(run(tile_size), run(None), strict=True):
        assert_relative(tiled, untiled, 1e-5)


def _similarity_gradient(sims: torch.Tensor, tau: float, tile_size: int | None) -> torch.Tensor:
    """∂L_i/∂s_ij via one-hot keys: with key = I, q_i · key_j is exactly s_ij."""
    query = sims.clone().requires_grad_()
    key = torch.eye(sims.shape[1], dtype=sims.dtype)
    loss = info_nce(query, key, temperature=tau, tile_size=tile_size) * sims.shape[0]
    (grad,) = torch.autograd.grad(loss, query)
    return grad


@pytest.mark.parametrize("tile_size", [None, 2])
@pytest.mark.parametrize("tau", [0.05, 0.3, 2.0])
def test_positive_gradient_equals_sum_of_negative_gradients(tau: float, tile_size: int | None):
    sims = torch.rand(4, 9, dtype=torch.float64) * 2 - 1
    grad = _similarity_gradient(sims, tau, tile_size)
    positive = grad.diagonal()
    negatives = grad.abs().sum(dim=1) - positive.abs()
    assert (positive < 0).all()
    torch.testing.assert_close(positive.abs(), negatives, rtol=0, atol=1e-6)
    # and each negative's gradient is (1/τ) P_ij
    # (docs/science.md#gradients-and-the-relative-penalty)
    probs = torch.softmax(sims[:, :9] / tau, dim=1)
    off_diagonal = ~torch.eye(4, 9, dtype=torch.bool)
    torch.testing.assert_close(grad[off_diagonal], (probs / tau)[off_diagonal])


def test_small_temperature_limit_is_hardest_negative_margin():
    sims = torch.rand(5, 8, dtype=torch.float64) * 2 - 1
    tau = 1e-4
    per_query = torch.stack([
        info_nce(sims[i:i + 1], torch.eye(8, dtype=torch.float64), temperature=tau,
                 positive_index=torch.tensor([i]))
        for i in range(5)
    ])
    hardest = sims.masked_fill(torch.eye(5, 8, dtype=torch.bool), -2).amax(dim=1)
    limit = (hardest - sims.diagonal()).clamp(min=0)
    # τ·L − max(s_max − s_ii, 0) ∈ [0, τ·log(N+1)]
    torch.testing.assert_close(tau * per_query, limit, rtol=0, atol=tau * math.log(8) + 1e-12)


def test_large_temperature_limit():
    # τ·(L − log(N+1)) → (Σ_k s_ik − N·s_ii)/(N+1): with N ≫ 1 this is the limit
    # −s_ii/τ + (1/(Nτ))Σ s_ik + log N (docs/science.md#limits-of-small-and-large-temperature).
    negatives = 7
    sims = torch.rand(4, negatives + 1, dtype=torch.float64) * 2 - 1
    key = torch.eye(negatives + 1, dtype=torch.float64)
    for tau in (1e3, 1e5):
        per_query = torch.stack([
            info_nce(sims[i:i + 1], key, temperature=tau, positive_index=torch.tensor([i]))
            for i in range(4)
        ])
        positive = sims.diagonal()
        limit = (sims.sum(dim=1) - positive - negatives * positive) / (negatives + 1)
        torch.testing.assert_close(tau * (per_query - math.log(negatives + 1)), limit,
                                   rtol=0, atol=10 / tau)


@pytest.mark.parametrize("tile_size", [None, 3])
def test_masked_keys_get_exactly_zero_gradient(tile_size: int | None):
    x = _inputs(4, 6, keys=8, pool=5, mined=2, seed=5)
    key = x["key"].clone().requires_grad_()
    positive_index = torch.arange(4)
    key_mask = torch.zeros(4, 8, dtype=torch.bool)
    key_mask[:, 6] = True  # key 6 is a false negative of every query
    loss = info_nce(x["query"], key, temperature=0.1, key_mask=key_mask,
                    positive_index=positive_index, tile_size=tile_size)
    (grad,) = torch.autograd.grad(loss, key)
    assert torch.equal(grad[6], torch.zeros(6))
    assert grad[7].abs().sum() > 0


@pytest.mark.parametrize("tile_size", [None, 2])
def test_masked_pool_entries_do_not_count(tile_size: int | None):
    x = _inputs(4, 6, keys=4, pool=6, mined=3, seed=9)
    q = x["query"].clone().requires_grad_()
    # The pool is shared: mask whole columns so an entry is excluded for every query.
    pool_mask = torch.zeros(4, 6, dtype=torch.bool)
    pool_mask[:, [1, 4]] = True
    masks = {"negative_mask": pool_mask, "query_negative_mask": x["query_negative_mask"]}
    base = info_nce(q, x["key"], x["negatives"], query_negatives=x["query_negatives"],
                    temperature=0.1, tile_size=tile_size, **masks)
    # Moving the masked entries onto a query (the hardest place there is) changes neither the
    # loss nor the query's gradient.
    pool = x["negatives"].clone()
    pool[[1, 4]] = x["query"][0]
    mined = x["query_negatives"].clone()
    for i in range(4):
        mined[i, x["query_negative_mask"][i]] = x["query"][i]
    moved = info_nce(q, x["key"], pool, query_negatives=mined, temperature=0.1,
                     tile_size=tile_size, **masks)
    assert moved.item() == pytest.approx(base.item(), rel=1e-6)
    g_base, = torch.autograd.grad(base, q)
    g_moved, = torch.autograd.grad(moved, q)
    torch.testing.assert_close(g_moved, g_base)


@pytest.mark.parametrize("tile_size", [None, 2])
def test_fully_masked_pool_row_has_no_nan(tile_size: int | None):
    x = _inputs(3, 4, keys=3, pool=5, mined=1, seed=2)
    q = x["query"].clone().requires_grad_()
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1] = True
    loss = info_nce(q, x["key"], x["negatives"], negative_mask=mask, temperature=0.2,
                    in_batch=False, tile_size=tile_size)
    (grad,) = torch.autograd.grad(loss, q)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # query 1 has only its positive: loss 0 and no gradient
    assert torch.equal(grad[1], torch.zeros(4))


@pytest.mark.parametrize("tile_size", [None, 4])
def test_bfloat16_inputs_give_float32_loss(tile_size: int | None):
    x = _inputs(4, 16, keys=4, pool=10, mined=1, seed=4)
    names = ("query", "key", "negatives")
    q, k, pool = (x[n].bfloat16().requires_grad_(n == "query") for n in names)
    loss = info_nce(q, k, pool, temperature=0.07, tile_size=tile_size)
    reference = info_nce(q.float(), k.float(), pool.float(), temperature=0.07)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, q)
    assert grad.dtype == torch.bfloat16


def test_pool_partials_merge_equals_whole_pool():
    x = _inputs(5, 8, keys=5, pool=23, mined=1, seed=6)
    q, pool, mask = x["query"], x["negatives"], x["negative_mask"]
    mask[2] = True  # an empty pool for query 2
    whole = pool_partials(q, pool, temperature=0.1, negative_mask=mask)
    shards = [(0, 7), (7, 8), (8, 23)]
    parts = [pool_partials(q, pool[a:b], temperature=0.1, negative_mask=mask[:, a:b], tile_size=3)
             for a, b in shards]
    merged = combine_partials(parts)
    lse = partials_lse(merged)
    expected = torch.logsumexp((q @ pool.T / 0.1).masked_fill(mask, float("-inf")), dim=1)
    torch.testing.assert_close(lse, expected)
    assert lse[2] == float("-inf")
    ref = partials_lse(whole)
    torch.testing.assert_close(lse, ref)
    finite = ~torch.isinf(ref)
    # The partials are relative to each merged max; compare the normalised gradient terms.
    for field in ("weighted_keys", "weighted_sim"):
        a = getattr(merged, field)[finite]
        b = getattr(whole, field)[finite]
        scale_a = merged.sum_exp[finite].reshape(-1, *[1] * (a.dim() - 1))
        scale_b = whole.sum_exp[finite].reshape(-1, *[1] * (b.dim() - 1))
        torch.testing.assert_close(a / scale_a, b / scale_b)


def test_partials_give_the_lse_gradients():
    q = torch.nn.functional.normalize(torch.randn(3, 5, dtype=torch.float64), dim=1)
    pool = torch.nn.functional.normalize(torch.randn(9, 5, dtype=torch.float64), dim=1)
    tau = torch.tensor(0.2, dtype=torch.float64)
    p = pool_partials(q, pool, temperature=tau, tile_size=4)
    qg = q.clone().requires_grad_()
    tg = tau.clone().requires_grad_()
    lse = torch.logsumexp(qg @ pool.T / tg, dim=1)
    grad_q, grad_tau = torch.autograd.grad(lse.sum(), [qg, tg])
    torch.testing.assert_close(p.weighted_keys / (p.sum_exp * tau)[:, None], grad_q)
    torch.testing.assert_close(-(p.weighted_sim / (p.sum_exp * tau**2)).sum(), grad_tau)


def test_negative_lse_of_a_sharded_pool_equals_the_whole_pool():
    x = _inputs(4, 8, keys=4, pool=12, mined=1, seed=8)
    q, k, pool = x["query"], x["key"], x["negatives"]
    parts = [pool_partials(q, pool[a:b], temperature=0.1) for a, b in ((0, 5), (5, 12))]
    sharded = info_nce(q, k, temperature=0.1, negative_lse=partials_lse(combine_partials(parts)))
    whole = info_nce(q, k, pool, temperature=0.1)
    assert sharded.item() == pytest.approx(whole.item(), rel=1e-6)


def test_bad_inputs_raise_one_clear_error():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="key must have at least"):
        info_nce(q, torch.randn(2, 4), temperature=0.1)
    with pytest.raises(ValueError, match="negative_mask must have shape"):
        info_nce(q, q, torch.randn(5, 4), negative_mask=torch.zeros(3, 4, dtype=torch.bool),
                 temperature=0.1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        info_nce(q, q, temperature=0.0)
    with pytest.raises(ValueError, match="tile_size"):
        info_nce(q, q, temperature=0.1, tile_size=0)


def test_loop_reference_sanity():
    # The reference itself: two orthogonal unit vectors, τ = 1 → log(1 + e^0 / e^1) by hand.
    q = np.array([[1.0, 0.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert info_nce_loop(q, k, 1.0) == pytest.approx(math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("tile_size", [None, 2])
def test_far_bound_falls_back_to_the_exact_recurrence(tile_size: int | None):
    # One long pool row orthogonal to the queries makes the Cauchy–Schwarz shift (‖q‖·R/τ)
    # exceed every logit by ~1000: exp(z − c) would underflow to 0, so these queries must be
    # recomputed with the running max. Value, gradient and the reported max stay exact.
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    key = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0]])
    pool = torch.tensor([[0.0, 0.0, 10.0], [-0.5, -0.5, 0.0], [0.2, -0.3, 0.0]])
    tau = 0.01
    tiled = info_nce(q, key, pool, temperature=tau, tile_size=tile_size or 3)
    untiled = info_nce(q, key, pool, temperature=tau)
    assert torch.isfinite(tiled)
    assert tiled.item() == pytest.approx(untiled.item(), rel=1e-6)
    g_tiled, = torch.autograd.grad(tiled, q)
    g_untiled, = torch.autograd.grad(untiled, q)
    assert_relative(g_tiled, g_untiled, 1e-6)
    parts = pool_partials(q.detach(), pool, temperature=tau, tile_size=tile_size)
    torch.testing.assert_close(parts.max, (q.detach() @ pool.T / tau).amax(dim=1))
    torch.testing.assert_close(partials_lse(parts), torch.logsumexp(q.detach() @ pool.T / tau, 1))


def test_pool_partials_report_the_true_max():
    q = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    pool = torch.nn.functional.normalize(torch.randn(13, 6), dim=1)
    parts = pool_partials(q, pool, temperature=0.1, tile_size=5)
    torch.testing.assert_close(parts.max, (q @ pool.T / 0.1).amax(dim=1))
    probs = torch.exp(q @ pool.T / 0.1 - parts.max[:, None])
    torch.testing.assert_close(parts.sum_exp, probs.sum(dim=1))
    torch.testing.assert_close(parts.weighted_keys, probs @ pool)
    torch.testing.assert_close(parts.weighted_sim, (probs * (q @ pool.T)).sum(dim=1))


@pytest.mark.parametrize("tile_size", [None, 2])
def test_hard_negatives_as_keys_get_their_gradient(tile_size: int | None):
    # DPR's layout, as the trainer builds it from a file's hard negatives: the keys are the B
    # positives, then M more documents; each query's positive is its own row.
    x = _inputs(3, 4, keys=3 + 4, pool=1, mined=1, seed=5, dtype=torch.float64)
    positives = torch.arange(3)

    def loss(q, k):
        return info_nce(q, k, temperature=0.2, positive_index=positives, tile_size=tile_size)

    q, k = x["query"].clone().requires_grad_(), x["key"].clone().requires_grad_()
    assert torch.autograd.gradcheck(loss, (q, k))
    (grad,) = torch.autograd.grad(loss(q, k), k)
    assert grad[3:].abs().sum(dim=1).min() > 0  # every extra document is pushed away
    # The closed form for the extra rows: dL/dk_j = (1/B) Σ_i softmax_ij q_i / τ.
    logits = q.detach() @ k.detach().T / 0.2
    expected = (logits.softmax(dim=1)[:, 3:].T @ q.detach()) / 0.2 / 3
    torch.testing.assert_close(grad[3:], expected)


def test_a_pool_with_a_gradient_is_refused_not_detached():
    x = _inputs(3, 4, keys=3, pool=5, mined=2, seed=1)
    pool = x["negatives"].clone().requires_grad_()
    with pytest.raises(ValueError, match="negatives carries a gradient"):
        info_nce(x["query"], x["key"], pool, temperature=0.2)
    mined = x["query_negatives"].clone().requires_grad_()
    with pytest.raises(ValueError, match="query_negatives carries a gradient"):
        info_nce(x["query"], x["key"], query_negatives=mined, temperature=0.2)
    with torch.no_grad():  # under no_grad (evaluation) nothing would be cut: allowed
        info_nce(x["query"], x["key"], pool, temperature=0.2)
    info_nce(x["query"], x["key"], pool.detach(), temperature=0.2)
