"""The InfoNCE family with the positive read from the memory bank (``loss.positive=memory``, the
memory-bank framework of InstDisc and of Wang & Liu): the trainer's own step, one process, with
the small stand-in engine of the NCE tests."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from dist_contrast.data import make_loader
from dist_contrast.objectives import ObjectiveInputs
from dist_contrast.train import step as step_module
from dist_contrast.train.step import TrainStep
from tests.train.test_worker_nce import make_step

TAU = 0.2


def _step(loss: dict[str, Any], bank: dict[str, Any]) -> tuple[TrainStep, Any]:
    step, data = make_step({
        "data": {"name": "synthetic", "num_samples": 120, "dim": 16, "signal_dim": 4},
        "model": {"name": "mlp", "hidden_dim": 16, "num_layers": 1, "embedding_dim": 8},
        "loss": {"temperature": TAU, **loss},
        "negatives": {"sources": ["bank"], "bank": {"momentum": 0.5, **bank}},
        "trainer": {"num_workers": 1, "batch_size": 16, "max_steps": 100},
        "eval": {"penalty_top_k": 3},
    })
    batch = next(iter(make_loader(data.train, batch_size=16, rank=0, world_size=1, seed=0,
                                  epoch=0)))
    return step, batch


Seen = list[tuple[ObjectiveInputs, torch.Tensor, torch.Tensor]]


def _spy(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Each call's inputs, loss and the loss's gradient in the queries (taken before the
    step's backward frees the graph)."""
    seen: Seen = []
    real = step_module.compute_objective

    def spy(name: str, inputs: ObjectiveInputs, tau: Any, **params: Any) -> torch.Tensor:
        loss = real(name, inputs, tau, **params)
        grad = torch.autograd.grad(loss, inputs.query, retain_graph=True)[0]
        seen.append((inputs, loss.detach(), grad))
        return loss

    monkeypatch.setattr(step_module, "compute_objective", spy)
    return seen


def test_info_nce_against_the_bank_entry_is_a_softmax_over_the_bank(monkeypatch):
    step, batch = _step({"name": "info_nce", "positive": "memory"}, {"as_pool": True})
    seen = _spy(monkeypatch)
    assert step.pool is not None and step.pool.bank is not None
    bank = step.pool.bank.vectors.clone()  # before this step's update
    ids = batch["index"]
    metrics = step(batch, 0, diagnose=True)
    ((inputs, loss, grad),) = seen
    # The positive is the instance's own entry, a constant; the negatives are every other
    # entry: together the whole bank, so the loss is a cross-entropy over it.
    torch.testing.assert_close(inputs.key[inputs.positive_index], bank[ids])
    assert not inputs.key.requires_grad
    query = inputs.query.detach().requires_grad_(True)
    direct = F.cross_entropy(query @ bank.T / TAU, ids)
    torch.testing.assert_close(loss, direct.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(direct, query)[0])
    # The penalty entropy is over the negatives the loss counts: the bank without the entry.
    logits = (query.detach() @ bank.T / TAU).double()
    logits[torch.arange(len(ids)), ids] = -math.inf
    log_r = torch.log_softmax(logits, dim=1)
    entropy = -(torch.where(log_r.isfinite(), log_r.exp() * log_r, 0.0)).sum(dim=1).mean()
    assert metrics["diag/penalty_entropy"] == pytest.approx(float(entropy), rel=1e-5)
    assert metrics["diag/negatives_counted"] == len(bank) - 1


def test_hard_info_nce_against_the_bank_entry_counts_its_nearest_k(monkeypatch):
    step, batch = _step({"name": "hard_info_nce", "positive": "memory", "params": {"top_k": 5}},
                        {"as_pool": True})
    seen = _spy(monkeypatch)
    assert step.pool is not None and step.pool.bank is not None
    bank = step.pool.bank.vectors.clone()
    ids = batch["index"]
    metrics = step(batch, 0, diagnose=True)
    ((inputs, loss, grad),) = seen
    query = inputs.query.detach().requires_grad_(True)
    sims = query @ bank.T
    own = F.one_hot(ids, len(bank)).bool()
    kept = sims.masked_fill(own, -math.inf).detach().topk(5, dim=1).indices
    logits = torch.cat([sims.gather(1, ids[:, None]), sims.gather(1, kept)], dim=1) / TAU
    direct = F.cross_entropy(logits, torch.zeros(len(ids), dtype=torch.long))
    torch.testing.assert_close(loss, direct.detach())
    torch.testing.assert_close(grad, torch.autograd.grad(direct, query)[0])
    assert metrics["diag/negatives_counted"] == 5
    assert metrics["diag/penalty_entropy_max"] == pytest.approx(math.log(5))


def test_random_k_negatives_from_the_bank(monkeypatch):
    step, batch = _step({"name": "info_nce", "positive": "memory"}, {"random_k": 7})
    seen = _spy(monkeypatch)
    metrics = step(batch, 0, diagnose=True)
    ((inputs, _, _),) = seen
    drawn = inputs.negatives.query_negatives
    assert drawn is not None and drawn.shape == (16, 7, 8)
    assert inputs.negatives.pool is None
    assert metrics["diag/negatives_counted"] == 7
