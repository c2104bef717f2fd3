"""The trainer's InstDisc step: the NCE positive is the bank entry, Z is (re-)estimated on time.

One process, no Ray or DeepSpeed: a small stand-in engine runs the trainer's own step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dist_contrast.config import Config
from dist_contrast.data import build_data, make_loader
from dist_contrast.losses import NormalizerEstimator, monte_carlo_normalizer
from dist_contrast.losses import nce as nce_module
from dist_contrast.models import build_model
from dist_contrast.negatives import build_negative_pool
from dist_contrast.objectives import ObjectiveInputs
from dist_contrast.train import step as step_module
from dist_contrast.train.step import TrainStep
from dist_contrast.train.worker import ContrastiveModel, build_temperature


class _Engine:
    """What ``train_step`` uses of a DeepSpeed engine: call, backward, step, module, LR."""

    def __init__(self, model: nn.Module) -> None:
        self.module = model
        self.device = "cpu"
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def __call__(self, x: torch.Tensor, side: str = "query") -> torch.Tensor:
        return self.module(x, side=side)

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()

    def get_lr(self) -> list[float]:
        return [0.1]

    lr_scheduler = None

    def zero_optimization(self) -> bool:
        return False

    def bfloat16_enabled(self) -> bool:
        return False

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()


class _Stepper:
    """The step and its counter, as the worker's loop holds them."""

    def __init__(self, step: TrainStep, data: Any) -> None:
        self.step, self.data, self.count = step, data, 0
        self.normalizer, self.pool = step.normalizer, step.pool

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = self.step(batch, self.count)
        self.count += 1
        return metrics


def make_step(raw: dict[str, Any], normalizer_every: int = 0) -> tuple[TrainStep, Any]:
    """The trainer's step for the config ``raw`` on the stand-in engine, and its data."""
    cfg = Config.model_validate(raw)
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    model = ContrastiveModel(build_model(cfg.model, data.input_shape), build_temperature(cfg))
    pool = build_negative_pool(cfg.negatives, dataset_size=len(data.train),
                               dim=cfg.model.embedding_dim, rank=0, world_size=1, seed=0)
    step = TrainStep(cfg=cfg, engine=_Engine(model), momentum_encoder=None, pool=pool,
                     dataset_size=len(data.train), has_labels=data.num_classes is not None,
                     normalizer=NormalizerEstimator(normalizer_every))
    return step, data


def _worker(normalizer_every: int = 0) -> _Stepper:
    step, data = make_step({
        "data": {"name": "synthetic", "num_samples": 200, "dim": 16, "signal_dim": 4},
        "model": {"name": "mlp", "hidden_dim": 16, "num_layers": 1, "embedding_dim": 8},
        "loss": {"name": "nce", "temperature": 0.2},
        "negatives": {"sources": ["bank"], "bank": {
            "noise_samples": 5, "momentum": 0.5, "normalizer_every": normalizer_every}},
        "trainer": {"num_workers": 1, "batch_size": 16, "max_steps": 100},
    }, normalizer_every)
    return _Stepper(step, data)


def _batches(worker: _Stepper) -> Any:
    return iter(make_loader(worker.data.train, batch_size=16, rank=0, world_size=1, seed=0,
                            epoch=0))


def test_nce_positive_is_the_bank_entry_before_the_update(monkeypatch: pytest.MonkeyPatch):
    worker = _worker()
    seen: list[ObjectiveInputs] = []
    real = step_module.compute_objective

    def spy(name: str, inputs: ObjectiveInputs, tau: Any, **params: Any) -> torch.Tensor:
        seen.append(inputs)
        return real(name, inputs, tau, **params)

    monkeypatch.setattr(step_module, "compute_objective", spy)
    assert worker.pool is not None and worker.pool.bank is not None
    bank = worker.pool.bank
    batch = next(_batches(worker))
    before = bank.vectors[batch["index"]].clone()
    worker.train_step(batch)

    (inputs,) = seen
    positive = inputs.key[inputs.positive_index]
    # InstDisc: the datum is (f_i, v_i) with v_i the entry written on earlier visits, a constant.
    torch.testing.assert_close(positive, before)
    assert not positive.requires_grad
    # ...and the bank took the step's keys afterwards (momentum-mixed, so it moved).
    assert not torch.allclose(bank.vectors[batch["index"]], before)


@pytest.mark.parametrize(("every", "estimated_at"), [(0, [0]), (2, [0, 2, 4])])
def test_normalizer_is_estimated_at_the_configured_steps(every: int, estimated_at: list[int],
                                                         monkeypatch: pytest.MonkeyPatch):
    worker = _worker(normalizer_every=every)
    estimates: list[tuple[int, float]] = []

    def recording(query: torch.Tensor, noise: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        value = monte_carlo_normalizer(query, noise, **kwargs)
        estimates.append((worker.count, float(value)))
        return value

    monkeypatch.setattr(nce_module, "monte_carlo_normalizer", recording)
    batches = _batches(worker)
    kept = []
    for _ in range(5):
        worker.train_step(next(batches))
        kept.append(worker.normalizer.value)
    assert [step for step, _ in estimates] == estimated_at
    # Between estimates the trainer uses the last one, unchanged.
    assert kept[-1] == pytest.approx(estimates[-1][1])
    assert worker.normalizer.step == estimated_at[-1]
