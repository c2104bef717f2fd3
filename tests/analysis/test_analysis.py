"""Diagnostics on closed-form cases and against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dist_contrast.analysis import (
    alignment,
    is_collapsed,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
    local_separation,
    mean_pairwise_similarity,
    negative_similarities,
    penalty_entropy,
    relative_penalty,
    sample_relative_penalty,
    tolerance,
    top_k_penalty_share,
    training_diagnostics,
    uniformity,
)
from dist_contrast.losses import info_nce


def _unit(*shape: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64),
                                         dim=-1)


def test_relative_penalty_is_the_gradient_ratio():
    sims = torch.rand(4, 7, dtype=torch.float64) * 2 - 1
    query = sims.clone().requires_grad_()
    (grad,) = torch.autograd.grad(info_nce(query, torch.eye(7, dtype=torch.float64),
                                           temperature=0.2), query)
    for i in range(4):
        negatives = [j for j in range(7) if j != i]
        ratio = grad[i, negatives].abs() / grad[i, i].abs()
        r = relative_penalty(sims[i:i + 1, negatives], 0.2)[0]
        torch.testing.assert_close(r, ratio)
        assert r.sum().item() == pytest.approx(1.0)


def test_penalty_entropy_strictly_increases_with_temperature():
    # distinct similarities 0.04 apart, shuffled per row: the τ → 0 limit is one-hot
    grid = torch.linspace(-1, 1, 50, dtype=torch.float64)
    sims = torch.stack([grid[torch.randperm(50)] for _ in range(6)])
    taus = [0.01, 0.03, 0.07, 0.1, 0.2, 0.5, 1.0, 5.0]
    entropies = [penalty_entropy(sims, tau).item() for tau in taus]
    assert all(b > a for a, b in zip(entropies, entropies[1:], strict=False))
    assert entropies[-1] < math.log(50)
    assert penalty_entropy(sims, 1e4).item() == pytest.approx(math.log(50), abs=1e-6)
    assert penalty_entropy(sims, 1e-4).item() == pytest.approx(0.0, abs=1e-6)


def test_top_k_share_limits():
    sims = torch.rand(5, 40, dtype=torch.float64) * 2 - 1
    assert top_k_penalty_share(sims, 1e-4, 1).item() == pytest.approx(1.0)
    assert top_k_penalty_share(sims, 1e4, 4).item() == pytest.approx(4 / 40, rel=1e-3)
    shares = [top_k_penalty_share(sims, tau, 4).item() for tau in (0.05, 0.2, 1.0)]
    assert shares[0] > shares[1] > shares[2]


def test_negative_similarities_split():
    q, k, pool = _unit(3, 4, seed=1), _unit(5, 4, seed=2), _unit(6, 4, seed=3)
    positive, negatives = negative_similarities(q, k, pool, positive_index=torch.tensor([4, 0, 2]))
    assert negatives.shape == (3, 4 + 6)
    assert positive[0].item() == pytest.approx((q[0] @ k[4]).item())
    expected_row0 = torch.cat([q[0] @ k[:4].T, q[0] @ pool.T])
    torch.testing.assert_close(negatives[0], expected_row0)


def test_uniformity_of_points_on_a_circle():
    # n equally spaced unit vectors: compare with a direct double loop, and with the
    # continuous limit log(e^{−2t} I₀(2t)) (‖x − y‖² = 2 − 2cos θ, θ uniform).
    n, t = 360, 2.0
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    x = torch.stack([angles.cos(), angles.sin()], dim=1)
    pts = x.numpy()
    values = [math.exp(-t * float(np.sum((pts[i] - pts[j]) ** 2)))
              for i in range(0, n, 7) for j in range(n) if j != i]
    assert uniformity(x, t).item() == pytest.approx(math.log(np.mean(values)), rel=1e-3)
    bessel_i0_of_4 = 11.301921952136330
    assert uniformity(x, t).item() == pytest.approx(math.log(math.exp(-2 * t) * bessel_i0_of_4),
                                                    rel=1e-2)
    # collapsed points are the least uniform: log E exp(0) = 0
    assert uniformity(torch.ones(5, 2) / math.sqrt(2), t).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_tolerance_and_separation_closed_forms():
    x = _unit(4, 3, seed=4)
    assert alignment(x, x).item() == pytest.approx(0.0)
    assert alignment(x, -x).item() == pytest.approx(4.0)
    assert alignment(x, -x, alpha=1.0).item() == pytest.approx(2.0)
    e = torch.eye(3, dtype=torch.float64)
    points = torch.stack([e[0], e[0], e[1], (e[1] + e[2]) / math.sqrt(2)])
    labels = torch.tensor([0, 0, 1, 1])
    assert tolerance(points, labels).item() == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2)
    assert math.isnan(tolerance(points, torch.arange(4)).item())
    positive = torch.tensor([0.9, 0.2])
    negatives = torch.tensor([[0.1, 0.5], [0.3, -0.1]])
    torch.testing.assert_close(local_separation(positive, negatives), torch.tensor([0.4, -0.1]))


def _clusters(per_class: int, classes: int, dim: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1) * 5
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=gen), labels


def test_knn_and_probe_on_separable_clusters_are_perfect():
    train, train_labels = _clusters(30, 4, 8, 0.1, seed=5)
    test, test_labels = _clusters(10, 4, 8, 0.1, seed=5)
    assert knn_accuracy(train, train_labels, test, test_labels, k=20, num_threads=1) == 1.0
    assert linear_probe_accuracy(train, train_labels, test, test_labels) == 1.0


@pytest.mark.parametrize(("k", "tau"), [(1, 0.07), (5, 0.07), (15, 0.5)])
def test_faiss_knn_equals_brute_force(k: int, tau: float):
    train, train_labels = _clusters(25, 3, 6, 3.0, seed=6)  # overlapping: votes matter
    test, _ = _clusters(8, 3, 6, 3.0, seed=7)
    ours = knn_predict(train, train_labels, test, k=k, temperature=tau)
    a = torch.nn.functional.normalize(test.double(), dim=1)
    b = torch.nn.functional.normalize(train.double(), dim=1)
    sims = a @ b.T
    top = sims.topk(k, dim=1)
    votes = torch.zeros(len(test), 3, dtype=torch.float64)
    votes.scatter_add_(1, train_labels[top.indices], torch.exp(top.values / tau))
    np.testing.assert_array_equal(ours, votes.argmax(dim=1).numpy())


def test_training_diagnostics_reports_everything():
    q, k, pool = _unit(6, 8, seed=8), _unit(6, 8, seed=9), _unit(10, 8, seed=10)
    out = training_diagnostics(q, k, pool, 0.1, labels=torch.tensor([0, 0, 1, 1, 2, 2]), top_k=3)
    expected = {"penalty_entropy", "penalty_entropy_max", "top3_penalty_share",
                "positive_similarity", "hardest_negative_similarity", "local_separation",
                "alignment", "uniformity", "tolerance"}
    assert set(out) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert 0 < out["penalty_entropy"] < out["penalty_entropy_max"]
    assert "tolerance" not in training_diagnostics(q, k, pool, 0.1)


def test_mean_pairwise_similarity_closed_form():
    e1, e2 = torch.eye(2, dtype=torch.float64)
    x = torch.stack([e1, e2, (e1 + e2) / math.sqrt(2)])
    # Pairs: 0, 1/√2, 1/√2.
    assert float(mean_pairwise_similarity(x)) == pytest.approx(math.sqrt(2) / 3)
    # ±e1, ±e2: two pairs at −1, four at 0; scale does not matter (cosine).
    assert float(mean_pairwise_similarity(3 * torch.stack([e1, -e1, e2, -e2]))) == pytest.approx(
        -1 / 3)
    x = _unit(50, 8, seed=3)
    sims = x @ x.T
    reference = (sims.sum() - sims.diagonal().sum()) / (50 * 49)
    assert float(mean_pairwise_similarity(x)) == pytest.approx(float(reference))


def test_collapse_alarm_on_collapsed_and_spread_embeddings():
    gen = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    collapsed = direction + 0.05 * torch.randn(200, 16, generator=gen)
    spread = torch.randn(200, 16, generator=gen)
    assert float(mean_pairwise_similarity(collapsed)) > 0.9
    assert is_collapsed(float(mean_pairwise_similarity(collapsed)))
    assert abs(float(mean_pairwise_similarity(spread))) < 0.05
    assert not is_collapsed(float(mean_pairwise_similarity(spread)), 0.9)
    # Identical views with everything close (0.85) is the onset; spread identical views are not.
    assert is_collapsed(0.85, 0.9995) and not is_collapsed(0.85, 0.99)
    assert not is_collapsed(0.3, 0.9995)


def test_sampled_relative_penalty_keeps_whole_rows_summing_to_one():
    sims = torch.rand(64, 100, dtype=torch.float64) * 2 - 1
    state = torch.random.get_rng_state()
    s, r = sample_relative_penalty(sims, 0.1, max_points=450,
                                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's RNG is not drawn from
    assert s.shape == r.shape == (4, 100)
    torch.testing.assert_close(r.sum(dim=1), torch.ones(4))
    # Each kept row is a query's row, with r its softmax at τ (closed form).
    rows = [int((sims.float() == row).all(dim=1).nonzero()) for row in s]
    torch.testing.assert_close(r, torch.softmax(sims[rows].float() / 0.1, dim=1))


def test_sampled_relative_penalty_thins_a_long_row():
    sims = torch.rand(8, 5000) * 2 - 1
    s, r = sample_relative_penalty(sims, 0.2, max_points=2000)
    assert s.shape == r.shape == (1, 2000)
    assert float(r.sum()) < 1.0  # normalised over the whole row, of which 2000 are shown
    assert torch.all(r > 0)
