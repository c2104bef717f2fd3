"""InstDisc NCE, focal / GHM weighting, the normaliser estimate and the proximal term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dist_contrast.losses import (
    NormalizerEstimator,
    monte_carlo_normalizer,
    nce_loss,
    proximal_regularizer,
)


def _unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def _nce_loop(q, pos, noise, tau, z, n, weighting="none", gamma=2.0, alpha=None, bins=10):
    """J_NCE from the definitions: P(i|v) = exp(s/τ)/Z, P_n = 1/n, h = P/(P + m·P_n)."""
    batch, m = noise.shape[:2]
    probs, targets = [], []
    for i in range(batch):
        for s, y in [(q[i] @ pos[i], 1)] + [(q[i] @ noise[i, k], 0) for k in range(m)]:
            p = math.exp(s / tau) / z
            probs.append(p / (p + m / n))
            targets.append(y)
    h, y = np.array(probs), np.array(targets)
    p_t = np.where(y == 1, h, 1 - h)
    terms = -np.log(p_t)
    if weighting == "focal":
        alpha_t = 1 if alpha is None else np.where(y == 1, alpha, 1 - alpha)
        terms = terms * (1 - p_t) ** gamma * alpha_t
    if weighting == "ghm":
        g = np.abs(h - y)
        edges = np.linspace(0, 1, bins + 1)
        which = np.clip(np.searchsorted(edges, g, side="right") - 1, 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        terms = terms * len(g) / (counts[which] * (counts > 0).sum())
    return terms.sum() / batch


@pytest.mark.parametrize(("batch", "m", "tau", "n"), [(1, 1, 0.07, 10), (4, 6, 0.1, 1000),
                                                       (3, 16, 0.5, 50_000)])
@pytest.mark.parametrize("weighting", ["none", "focal", "ghm"])
def test_nce_matches_definition(batch: int, m: int, tau: float, n: int, weighting: str):
    q, pos, noise = _unit(batch, 8, seed=1), _unit(batch, 8, seed=2), _unit(batch, m, 8, seed=3)
    z = 0.7 * n
    loss = nce_loss(q, pos, noise, temperature=tau, normalizer=z, dataset_size=n,
                    weighting=weighting, focal_alpha=0.25 if weighting == "focal" else None)
    expected = _nce_loop(q.numpy(), pos.numpy(), noise.numpy(), tau, z, n, weighting,
                         alpha=0.25 if weighting == "focal" else None)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_focal_down_weights_easy_terms():
    q = _unit(4, 8, seed=4)
    noise = -q[:, None, :].repeat(1, 3, 1)  # trivially easy noise
    args = {"temperature": 0.1, "normalizer": 10.0, "dataset_size": 10}
    plain = nce_loss(q, q, noise, **args)
    assert nce_loss(q, q, noise, weighting="focal", **args) < plain


def test_nce_gradcheck():
    q, pos, noise = _unit(3, 4, seed=5), _unit(3, 4, seed=6), _unit(3, 5, 4, seed=7)
    tau = torch.tensor(0.2, dtype=torch.float64)
    for weighting in ("none", "focal", "ghm"):
        def loss(q, t, weighting=weighting):
            return nce_loss(q, pos, noise, temperature=t, normalizer=30.0, dataset_size=40,
                            weighting=weighting)

        assert torch.autograd.gradcheck(loss, (q.clone().requires_grad_(), tau.requires_grad_()))


def test_nce_float32_from_bf16():
    q, pos, noise = (x.bfloat16() for x in (_unit(2, 8, seed=8), _unit(2, 8, seed=9),
                                             _unit(2, 3, 8, seed=10)))
    loss = nce_loss(q, pos, noise, temperature=0.07, normalizer=5.0, dataset_size=100)
    assert loss.dtype == torch.float32


def test_normalizer_is_estimated_once_and_round_trips():
    q, noise = _unit(5, 8, seed=11), _unit(5, 7, 8, seed=12)
    expected = 1000 * np.mean(np.exp(np.einsum("bd,bmd->bm", q.numpy(), noise.numpy()) / 0.1))
    assert monte_carlo_normalizer(q, noise, temperature=0.1, dataset_size=1000).item() == \
        pytest.approx(expected)
    estimator = NormalizerEstimator()
    assert not estimator.is_set
    first = estimator.update(q, noise, temperature=0.1, dataset_size=1000)
    assert first == pytest.approx(expected)
    other = _unit(5, 8, seed=13)
    assert estimator.update(other, noise, temperature=0.1, dataset_size=1000) == first
    restored = NormalizerEstimator()
    restored.load_state_dict(estimator.state_dict())
    assert restored.value == first and restored.is_set
    empty = NormalizerEstimator()
    empty.load_state_dict(NormalizerEstimator().state_dict())
    assert not empty.is_set
    with pytest.raises(ValueError, match="positive number"):
        NormalizerEstimator().set(float("nan"), 0)


def test_more_noise_samples_estimate_z_better():
    # Z = Σ_j exp(v_j·f/τ) over a bank of n; the MC error shrinks with m.
    bank, f = _unit(4000, 8, seed=14), _unit(1, 8, seed=15)
    exact = torch.exp(bank @ f[0] / 0.5).sum().item()
    gen = torch.Generator().manual_seed(16)
    errors = []
    for m in (10, 3000):
        idx = torch.randint(0, 4000, (1, m), generator=gen)
        estimate = monte_carlo_normalizer(f, bank[idx], temperature=0.5, dataset_size=4000)
        errors.append(abs(estimate.item() - exact) / exact)
    assert errors[1] < 0.05 and errors[1] < errors[0] + 0.02


def test_proximal_regularizer():
    current = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    previous = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    value = proximal_regularizer(current, previous, weight=0.5)
    assert value.item() == pytest.approx(0.5 * (1 + 1) / 2)
    (grad,) = torch.autograd.grad(value, current)
    torch.testing.assert_close(grad, 0.5 * 2 * (current - previous).detach() / 2)


def test_bad_arguments():
    q, noise = _unit(2, 4, seed=17), _unit(2, 3, 4, seed=18)
    with pytest.raises(ValueError, match="weighting must be"):
        nce_loss(q, q, noise, temperature=0.1, normalizer=1.0, dataset_size=5,
                 weighting="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise must be"):
        nce_loss(q, q, noise[0], temperature=0.1, normalizer=1.0, dataset_size=5)


def test_normalizer_refresh_every_k_steps():
    q, noise = _unit(5, 8, seed=19), _unit(5, 7, 8, seed=20)
    other = _unit(5, 8, seed=21)

    def z(query: torch.Tensor) -> float:
        # Z ≈ n · mean exp(v·f/τ), the closed form of the estimate.
        sims = np.einsum("bd,bmd->bm", query.numpy(), noise.numpy())
        return 1000 * float(np.mean(np.exp(sims / 0.1)))

    args = {"temperature": 0.1, "dataset_size": 1000}
    kept = NormalizerEstimator()  # InstDisc: once, then constant
    assert kept.update(q, noise, step=0, **args) == pytest.approx(z(q))
    assert kept.update(other, noise, step=500, **args) == pytest.approx(z(q))
    refreshed = NormalizerEstimator(every=3)
    assert refreshed.update(q, noise, step=1, **args) == pytest.approx(z(q))
    assert not refreshed.is_due(3) and refreshed.is_due(4)
    assert refreshed.update(other, noise, step=3, **args) == pytest.approx(z(q))
    assert refreshed.update(other, noise, step=4, **args) == pytest.approx(z(other))
    assert refreshed.step == 4
    restored = NormalizerEstimator(every=3)
    restored.load_state_dict(refreshed.state_dict())
    assert (restored.value, restored.step) == (refreshed.value, 4) and restored.is_due(7)
    legacy = NormalizerEstimator(every=3)  # a checkpoint from before refreshes: no step
    legacy.load_state_dict({"value": 5.0})
    assert legacy.step == 0 and legacy.is_due(3) and not legacy.is_due(2)
    with pytest.raises(ValueError, match="0 \\(once\\) or more"):
        NormalizerEstimator(every=-1)
