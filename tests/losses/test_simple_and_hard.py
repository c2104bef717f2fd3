"""Simple loss and the hard (truncated) losses against loop re-statements; exact zero gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_contrast.losses import hard_info_nce, hard_simple_loss, info_nce, simple_loss
from tests.losses.reference import assert_relative, info_nce_loop, simple_loop


def _unit(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


@pytest.mark.parametrize("tile_size", [None, 4])
@pytest.mark.parametrize(("batch", "dim", "lam"), [(1, 3, 1.0), (4, 8, 0.5), (7, 5, 2.0)])
def test_simple_matches_loop(batch: int, dim: int, lam: float, tile_size: int | None):
    q, k, pool = _unit(batch, dim, seed=1), _unit(batch + 2, dim, seed=2), _unit(9, dim, seed=3)
    mask = torch.rand(batch, 9, generator=torch.Generator().manual_seed(4)) < 0.3
    loss = simple_loss(q, k, pool, lam=lam, negative_mask=mask, tile_size=tile_size)
    expected = simple_loop(q.double().numpy(), k.double().numpy(), lam,
                           negatives=pool.double().numpy(), negative_mask=mask.numpy())
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_simple_gives_every_negative_the_same_gradient():
    sims = torch.rand(3, 6, dtype=torch.float64, requires_grad=True)
    loss = simple_loss(sims, torch.eye(6, dtype=torch.float64), lam=0.25) * 3
    (grad,) = torch.autograd.grad(loss, sims)
    expected = torch.full((3, 6), 0.25, dtype=torch.float64)
    expected[range(3), range(3)] = -1
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("tile_size", [None, 2])
def test_simple_gradcheck(tile_size: int | None):
    q, k = _unit(3, 4, seed=5, dtype=torch.float64), _unit(4, 4, seed=6, dtype=torch.float64)
    pool, mined = _unit(5, 4, seed=7, dtype=torch.float64), _unit(3, 2, 4, seed=8,
                                                                   dtype=torch.float64)

    def loss(q, k):
        return simple_loss(q, k, pool, query_negatives=mined, lam=0.7, tile_size=tile_size)

    assert torch.autograd.gradcheck(loss, (q.requires_grad_(), k.requires_grad_()))


def _keep_top(q: np.ndarray, key: np.ndarray, pool: np.ndarray,
              top_k: int | None, quantile: float | None) -> dict[str, np.ndarray]:
    """Which negatives a hard loss keeps, straight from the definition (NumPy)."""
    batch = q.shape[0]
    keep = {"key": np.zeros((batch, key.shape[0]), bool),
            "pool": np.zeros((batch, len(pool)), bool)}
    for i in range(batch):
        sims = [(float(q[i] @ key[j]), "key", j) for j in range(key.shape[0]) if j != i]
        sims += [(float(q[i] @ pool[n]), "pool", n) for n in range(len(pool))]
        values = np.array([s for s, _, _ in sims])
        if top_k is not None:
            boundary = np.sort(values)[::-1][min(top_k, len(values)) - 1]
        else:
            boundary = np.quantile(values, quantile, method="lower")
        for s, source, j in sims:
            keep[source][i, j] = s >= boundary
    return keep


@pytest.mark.parametrize("tile_size", [None, 3])
@pytest.mark.parametrize(("top_k", "quantile"), [(1, None), (4, None), (100, None),
                                                  (None, 0.0), (None, 0.5), (None, 1.0)])
def test_hard_losses_match_loop(top_k: int | None, quantile: float | None, tile_size: int | None):
    batch, dim = 5, 6
    q = _unit(batch, dim, seed=11, dtype=torch.float64)
    k = _unit(batch, dim, seed=12, dtype=torch.float64)
    pool = _unit(8, dim, seed=13, dtype=torch.float64)
    keep = _keep_top(q.numpy(), k.numpy(), pool.numpy(), top_k, quantile)
    kw = {"top_k": top_k, "quantile": quantile, "tile_size": tile_size}
    loss = hard_info_nce(q, k, pool, temperature=0.2, **kw)
    expected = info_nce_loop(q.numpy(), k.numpy(), 0.2, negatives=pool.numpy(), keep=keep)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    simple = hard_simple_loss(q, k, pool, lam=0.5, **kw)
    expected = simple_loop(q.numpy(), k.numpy(), 0.5, negatives=pool.numpy(), keep=keep)
    assert simple.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("loss_name", ["info_nce", "simple"])
@pytest.mark.parametrize("tile_size", [None, 2])
def test_truncated_negatives_get_exactly_zero_gradient(loss_name: str, tile_size: int | None):
    # One-hot keys make q_i's coordinates the similarities, so ∂L/∂q is ∂L/∂s.
    sims = torch.rand(4, 10, dtype=torch.float64) * 2 - 1
    query = sims.clone().requires_grad_()
    key = torch.eye(10, dtype=torch.float64)
    if loss_name == "info_nce":
        loss = hard_info_nce(query, key, temperature=0.1, top_k=3, tile_size=tile_size)
    else:
        loss = hard_simple_loss(query, key, top_k=3, tile_size=tile_size)
    (grad,) = torch.autograd.grad(loss, query)
    for i in range(4):
        negatives = [j for j in range(10) if j != i]
        hardest = sorted(negatives, key=lambda j: -sims[i, j].item())[:3]
        for j in negatives:
            if j in hardest:
                assert grad[i, j] != 0
            else:
                assert grad[i, j].item() == 0.0


def test_hard_with_every_negative_kept_is_the_full_loss():
    q, k, pool = _unit(4, 5, seed=21), _unit(6, 5, seed=22), _unit(7, 5, seed=23)
    full = info_nce(q, k, pool, temperature=0.1)
    hard = hard_info_nce(q, k, pool, temperature=0.1, top_k=10_000)
    assert hard.item() == pytest.approx(full.item(), rel=1e-6)
    assert hard_simple_loss(q, k, pool, quantile=0.0).item() == pytest.approx(
        simple_loss(q, k, pool).item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("tile_size", [1, 3, 5])
def test_hard_tiled_equals_untiled_with_gradients(tile_size: int):
    q0, k0 = _unit(5, 6, seed=31), _unit(7, 6, seed=32)
    pool, mined = _unit(11, 6, seed=33), _unit(5, 4, 6, seed=34)
    mask = torch.rand(5, 11, generator=torch.Generator().manual_seed(35)) < 0.3

    def run(tile: int | None) -> tuple[torch.Tensor, ...]:
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        tau = torch.tensor(0.15, requires_grad=True)
        loss = hard_info_nce(q, k, pool, temperature=tau, query_negatives=mined,
                             negative_mask=mask, top_k=6, tile_size=tile)
        return (loss, *torch.autograd.grad(loss, [q, k, tau]))

    for tiled, untiled in zip(run(tile_size), run(None), strict=True):
        assert_relative(tiled, untiled, 1e-5)


def test_hard_gradcheck():
    q, k = _unit(3, 4, seed=41, dtype=torch.float64), _unit(5, 4, seed=42, dtype=torch.float64)
    pool = _unit(6, 4, seed=43, dtype=torch.float64)
    tau = torch.tensor(0.3, dtype=torch.float64)
    for tile in (None, 2):
        def loss(q, k, t, tile=tile):
            return hard_info_nce(q, k, pool, temperature=t, top_k=4, tile_size=tile)

        args = tuple(x.clone().requires_grad_() for x in (q, k, tau))
        assert torch.autograd.gradcheck(loss, args)


def test_boundary_arguments_are_checked():
    q = _unit(2, 3, seed=51)
    with pytest.raises(ValueError, match="exactly one of top_k"):
        hard_info_nce(q, q, temperature=0.1)
    with pytest.raises(ValueError, match="exactly one of top_k"):
        hard_info_nce(q, q, temperature=0.1, top_k=2, quantile=0.5)
    with pytest.raises(ValueError, match="quantile must be"):
        hard_simple_loss(q, q, quantile=1.5)
