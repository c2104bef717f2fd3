"""The global batch across W real gloo processes equals one process on the concatenated batch.

Each rank computes InfoNCE for its own B queries against all W·B gathered keys; the gather
sends other ranks' gradients for our keys back home, and the optimiser averages parameter
gradients over ranks (as DeepSpeed does). The result must be the single-process loss and
gradients on the concatenated 2B batch.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from dist_contrast import dist
from dist_contrast.losses import info_nce
from tests.gloo import run_distributed

TAU = 0.2


def _data(world: int, rows: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    q = torch.nn.functional.normalize(
        torch.randn(world * rows, dim, generator=generator, dtype=torch.float64), dim=1
    )
    k = torch.nn.functional.normalize(
        torch.randn(world * rows, dim, generator=generator, dtype=torch.float64), dim=1
    )
    return q, k


def _rank_embedding_grads(rows: int, dim: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    r, world = dist.rank(), dist.world_size()
    q_all, k_all = _data(world, rows, dim)
    q = q_all[r * rows : (r + 1) * rows].clone().requires_grad_(True)
    k = k_all[r * rows : (r + 1) * rows].clone().requires_grad_(True)
    keys = dist.all_gather_with_grad(k)
    loss = info_nce(q, keys, temperature=TAU, positive_index=r * rows + torch.arange(rows))
    loss.backward()
    assert q.grad is not None and k.grad is not None
    return float(loss.detach()), q.grad.clone(), k.grad.clone()


def test_loss_and_embedding_gradients_match_single_process() -> None:
    rows, dim, world = 5, 8, 2
    results = run_distributed(_rank_embedding_grads, rows, dim, world_size=world)

    q_all, k_all = _data(world, rows, dim)
    q_all.requires_grad_(True)
    k_all.requires_grad_(True)
    single = info_nce(q_all, k_all, temperature=TAU)
    single.backward()
    assert q_all.grad is not None and k_all.grad is not None

    mean_loss = sum(loss for loss, _, _ in results) / world
    assert abs(mean_loss - float(single.detach())) < 1e-10
    # Averaging over ranks (what the optimiser does) turns each rank's gradient into 1/W of it.
    q_grad = torch.cat([g for _, g, _ in results]) / world
    k_grad = torch.cat([g for _, _, g in results]) / world
    torch.testing.assert_close(q_grad, q_all.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(k_grad, k_all.grad, rtol=1e-9, atol=1e-12)


def _encoder(dim: int) -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8)
    ).double()


def _inputs(world: int, rows: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    x1 = torch.randn(world * rows, dim, generator=generator, dtype=torch.float64)
    x2 = x1 + 0.1 * torch.randn(world * rows, dim, generator=generator, dtype=torch.float64)
    return x1, x2


def _step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, offset: int) -> torch.Tensor:
    q = torch.nn.functional.normalize(model(x1), dim=1)
    k = torch.nn.functional.normalize(model(x2), dim=1)
    keys = dist.all_gather_with_grad(k)
    return info_nce(q, keys, temperature=TAU, positive_index=offset + torch.arange(len(q)))


def _rank_parameter_grads(rows: int, dim: int) -> list[torch.Tensor]:
    r, world = dist.rank(), dist.world_size()
    model = _encoder(dim)
    x1, x2 = _inputs(world, rows, dim)
    part = slice(r * rows, (r + 1) * rows)
    _step(model, x1[part], x2[part], r * rows).backward()
    grads = []
    for p in model.parameters():
        assert p.grad is not None
        torch_dist.all_reduce(p.grad)  # the data-parallel average DeepSpeed performs
        grads.append(p.grad / world)
    return grads


def test_parameter_gradients_match_single_process() -> None:
    rows, dim, world = 6, 10, 2
    results = run_distributed(_rank_parameter_grads, rows, dim, world_size=world)
    model = _encoder(dim)
    x1, x2 = _inputs(world, rows, dim)
    _step(model, x1, x2, 0).backward()
    for rank_grads in results:
        for got, param in zip(rank_grads, model.parameters(), strict=True):
            assert param.grad is not None
            torch.testing.assert_close(got, param.grad, rtol=1e-9, atol=1e-12)


def test_single_process_gather_is_identity() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    assert dist.all_gather_with_grad(x) is x
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_rank_zero()
