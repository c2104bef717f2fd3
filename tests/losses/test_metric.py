"""Margin, triplet (plain and batch-hard), N-pair, circle and SupCon losses against loops and
pytorch-metric-learning (used here only, as an independent implementation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import MeanReducer

from dist_contrast.losses import (
    batch_hard_triplet_loss,
    circle_loss,
    margin_contrastive_loss,
    n_pair_loss,
    supcon_loss,
    triplet_loss,
)


def _unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


@pytest.mark.parametrize(("pairs", "dim", "margin"), [(1, 2, 1.0), (6, 4, 0.5), (10, 8, 1.5)])
def test_margin_contrastive_pairs_match_loop(pairs: int, dim: int, margin: float):
    a, b = _unit(pairs, dim, seed=1), _unit(pairs, dim, seed=2)
    y = torch.arange(pairs) % 2
    total = 0.0
    for p in range(pairs):
        d = float(np.linalg.norm(a[p].numpy() - b[p].numpy()))
        total += d**2 if y[p] == 1 else max(margin - d, 0.0) ** 2
    expected = total / (2 * pairs)
    assert margin_contrastive_loss(a, b, y, margin=margin).item() == pytest.approx(expected)


def test_margin_contrastive_all_pairs_equals_explicit_pairs():
    a, b = _unit(4, 5, seed=3), _unit(6, 5, seed=4)
    match = torch.zeros(4, 6, dtype=torch.bool)
    match[range(4), range(4)] = True
    excluded = torch.zeros(4, 6, dtype=torch.bool)
    excluded[0, 5] = True
    rows, cols = (~excluded).nonzero(as_tuple=True)
    explicit = margin_contrastive_loss(a[rows], b[cols], match[rows, cols], margin=1.2)
    matrix = margin_contrastive_loss(a, b, match, margin=1.2, pair_mask=excluded)
    assert matrix.item() == pytest.approx(explicit.item())


def test_margin_contrastive_coinciding_points_have_finite_gradient():
    a = _unit(2, 3, seed=5).requires_grad_()
    loss = margin_contrastive_loss(a, a.detach().clone(), torch.tensor([0, 1]))
    (grad,) = torch.autograd.grad(loss, a)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_triplet_matches_pml(margin: float):
    a, p, n = _unit(8, 6, seed=6), _unit(8, 6, seed=7), _unit(8, 6, seed=8)
    embeddings = torch.cat([a, p, n])
    idx = torch.arange(8)
    theirs = pml.TripletMarginLoss(
        margin=margin, distance=LpDistance(normalize_embeddings=False, power=2),
        reducer=MeanReducer(),
    )(embeddings, torch.zeros(24), indices_tuple=(idx, idx + 8, idx + 16))
    assert triplet_loss(a, p, n, margin=margin).item() == pytest.approx(theirs.item())
    assert triplet_loss(a, p, n, margin=margin, reduction="sum").item() == \
        pytest.approx(8 * theirs.item())


@pytest.mark.parametrize("squared", [True, False])
def test_batch_hard_triplet_matches_loop(squared: bool):
    x = _unit(10, 4, seed=9)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 1])  # label 3 has no positive
    losses = []
    for i in range(10):
        d = [float(np.sum((x[i].numpy() - x[j].numpy()) ** 2)) for j in range(10)]
        d = d if squared else [math.sqrt(v) for v in d]
        pos = [d[j] for j in range(10) if j != i and labels[j] == labels[i]]
        neg = [d[j] for j in range(10) if labels[j] != labels[i]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + 0.3, 0.0))
    expected = sum(losses) / len(losses)
    ours = batch_hard_triplet_loss(x, labels, margin=0.3, squared=squared)
    assert ours.item() == pytest.approx(expected, rel=1e-9)


def test_batch_hard_triplet_with_references():
    q, k = _unit(4, 5, seed=10), _unit(6, 5, seed=11)
    loss = batch_hard_triplet_loss(q, torch.arange(4), k, torch.arange(6), margin=0.5)
    d = ((q[:, None] - k[None]) ** 2).sum(-1)
    hardest_negative = d.masked_fill(torch.eye(4, 6, dtype=torch.bool), float("inf")).amin(1)
    expected = torch.relu(d.diagonal() - hardest_negative + 0.5).mean()
    assert loss.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("pairs", [2, 5, 9])
def test_n_pair_matches_sohn_formula(pairs: int):
    f, f_plus = _unit(pairs, 6, seed=12), _unit(pairs, 6, seed=13)
    expected = np.mean([
        math.log(1 + sum(math.exp(float(f[i] @ f_plus[j] - f[i] @ f_plus[i]))
                         for j in range(pairs) if j != i))
        for i in range(pairs)
    ])
    assert n_pair_loss(f, f_plus).item() == pytest.approx(expected)


def test_n_pair_matches_pml():
    f, f_plus = _unit(6, 8, seed=14), _unit(6, 8, seed=15)
    labels = torch.arange(6).repeat(2)
    theirs = pml.NPairsLoss()(torch.cat([f, f_plus]), labels)
    assert n_pair_loss(f, f_plus).item() == pytest.approx(theirs.item())


@pytest.mark.parametrize(("gamma", "margin"), [(80.0, 0.4), (256.0, 0.25), (32.0, 0.1)])
def test_circle_matches_pml_and_formula(gamma: float, margin: float):
    x = _unit(12, 6, seed=16)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 1])  # 3 has no positive
    sims = x @ x.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(12, dtype=torch.bool)
    ours = circle_loss(sims, same & ~eye, ~same, gamma=gamma, margin=margin)
    theirs = pml.CircleLoss(m=margin, gamma=gamma)(x, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    per_anchor = []
    for i in range(12):
        sp = [float(sims[i, j]) for j in range(12) if j != i and labels[j] == labels[i]]
        sn = [float(sims[i, j]) for j in range(12) if labels[j] != labels[i]]
        if not sp:
            continue
        # log-space sums: with γ = 256 the exponentials overflow a float64
        log_neg = np.logaddexp.reduce([gamma * max(s + margin, 0) * (s - margin) for s in sn])
        log_pos = np.logaddexp.reduce(
            [-gamma * max(1 + margin - s, 0) * (s - 1 + margin) for s in sp])
        per_anchor.append(np.logaddexp(0.0, log_neg + log_pos))
    assert ours.item() == pytest.approx(np.mean(per_anchor), rel=1e-6)


def test_circle_gradient_treats_alpha_as_weights():
    # α_p, α_n are detached, so ∂L/∂s_n^j = σ(A + B) · softmax_n(j) · γ α_n^j and
    # ∂L/∂s_p^i = −σ(A + B) · softmax_p(i) · γ α_p^i, with A, B the two log-sum-exps.
    gamma, m = 4.0, 0.3
    sims = (torch.rand(1, 6, dtype=torch.float64) * 2 - 1).requires_grad_()
    pos = torch.tensor([[True, True, False, False, False, False]])
    (grad,) = torch.autograd.grad(circle_loss(sims, pos, ~pos, gamma=gamma, margin=m), sims)
    s = sims.detach()[0]
    alpha_p, alpha_n = torch.relu(1 + m - s[:2]), torch.relu(s[2:] + m)
    logits_p, logits_n = -gamma * alpha_p * (s[:2] - 1 + m), gamma * alpha_n * (s[2:] - m)
    outer = torch.sigmoid(torch.logsumexp(logits_p, 0) + torch.logsumexp(logits_n, 0))
    expected = torch.cat([-outer * torch.softmax(logits_p, 0) * gamma * alpha_p,
                          outer * torch.softmax(logits_n, 0) * gamma * alpha_n])
    torch.testing.assert_close(grad[0], expected)
    none = torch.zeros(1, 6, dtype=torch.bool)
    assert circle_loss(sims, none, ~none).item() == 0.0


@pytest.mark.parametrize("tau", [0.07, 0.1, 0.5])
def test_supcon_matches_pml(tau: float):
    x = _unit(12, 6, seed=17)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 1])
    ours = supcon_loss(x, x, labels, labels, temperature=tau,
                       key_mask=torch.eye(12, dtype=torch.bool))
    theirs = pml.SupConLoss(temperature=tau)(x, labels)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_supcon_with_instance_labels_is_info_nce():
    from dist_contrast.losses import info_nce

    q, k = _unit(5, 4, seed=18), _unit(5, 4, seed=19)
    ids = torch.arange(5)
    assert supcon_loss(q, k, ids, ids, temperature=0.2).item() == pytest.approx(
        info_nce(q, k, temperature=0.2).item())


def test_metric_gradchecks():
    a, b, c = (_unit(4, 3, seed=s).requires_grad_() for s in (20, 21, 22))
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.autograd.gradcheck(
        lambda a, b: margin_contrastive_loss(a, b, torch.tensor([1, 0, 1, 0]), margin=1.5), (a, b))
    assert torch.autograd.gradcheck(lambda a, b, c: triplet_loss(a, b, c, margin=0.5), (a, b, c))
    assert torch.autograd.gradcheck(lambda a: batch_hard_triplet_loss(a, labels, margin=1.0), (a,))
    assert torch.autograd.gradcheck(lambda a, b: n_pair_loss(a, b), (a, b))
    assert torch.autograd.gradcheck(
        lambda a, b: supcon_loss(a, b, labels, labels, temperature=0.3), (a, b))
