"""The step's one agreement all-reduce, with two real gloo processes and real DeepSpeed engines
(with and without GradCache): a non-finite loss on one rank skips the step on both (no update,
no pool write), a stop asked by rank 0 alone is seen by both, and the pools get the global
batch's ids and labels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.faults import nan_at_steps
from tests.gloo import run_distributed

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS = 4
NAN_STEP = 2  # the second step's loss is NaN on rank 1 only
STOP_STEP = 3  # rank 0 alone asks to stop at the third step


def _agreement_run(zero_stage: int, chunk: int | None = None) -> dict[str, Any]:
    from dist_contrast import dist
    from dist_contrast.config import load_config
    from dist_contrast.data import build_data, make_loader
    from dist_contrast.models import build_model
    from dist_contrast.train.worker import build_engine, build_step

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())
    if dist.rank() == 1:  # a NaN loss in one process only
        nan_at_steps("info_nce", [NAN_STEP])
    cfg = load_config(CONFIGS / "synthetic.yaml", [
        "data.num_samples=400", "model.hidden_dim=16", "model.embedding_dim=8",
        "trainer.num_workers=2", "trainer.batch_size=16", f"trainer.max_steps={STEPS}",
        "negatives.sources=[batch,bank]", f"deepspeed.zero_stage={zero_stage}",
        *([f"trainer.grad_cache={{chunk_size: {chunk}}}"] if chunk else []),
    ])
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    encoder = build_model(cfg.model, data.input_shape)
    engine = build_engine(cfg, encoder)
    step = build_step(cfg, engine, data, encoder)
    assert step.pool is not None and step.pool.bank is not None
    loader = make_loader(data.train, batch_size=16, rank=dist.rank(), world_size=2, seed=0,
                         epoch=0, drop_last=True)
    weights, banks, stops, batches = [], [], [], []
    for index, batch in zip(range(STEPS), loader, strict=False):
        ask = dist.rank() == 0 and index + 1 == STOP_STEP
        step(batch, index, stop=ask)
        stops.append(step.stop_agreed)
        weights.append(torch.cat([p.detach().flatten()
                                  for p in engine.module.encoder.parameters()]).numpy().copy())
        banks.append(step.pool.bank.vectors.numpy().copy())
        batches.append((batch["index"].tolist(), batch["label"].tolist()))
    # numpy and lists: tensors through the result queue would be shared memory that dies
    # with this process.
    return {"weights": weights, "banks": banks, "stops": stops, "batches": batches,
            "skipped": step.skipped_steps, "bank_labels": step.pool.bank.labels.tolist()}


@pytest.mark.parametrize(("zero_stage", "chunk"), [(0, None), (1, None), (0, 5), (2, 5)],
                         ids=["zero0", "zero1", "zero0-gradcache", "zero2-gradcache"])
def test_one_rank_non_finite_skips_everywhere_and_stop_is_agreed(zero_stage: int,
                                                                  chunk: int | None) -> None:
    ranks = run_distributed(_agreement_run, zero_stage, chunk)
    for result in ranks:
        assert result["skipped"] == 1
        weights, banks = result["weights"], result["banks"]
        # The bad step changes nothing; the steps around it do.
        assert np.array_equal(weights[NAN_STEP - 1], weights[NAN_STEP - 2])
        assert np.array_equal(banks[NAN_STEP - 1], banks[NAN_STEP - 2])
        assert not np.array_equal(weights[NAN_STEP], weights[NAN_STEP - 1])
        assert all(np.isfinite(w).all() for w in weights)
        assert result["stops"] == [step + 1 == STOP_STEP for step in range(STEPS)]
    # Both ranks took the same steps with the same pools.
    for mine, theirs in zip(ranks[0]["weights"], ranks[1]["weights"], strict=True):
        assert np.array_equal(mine, theirs)
    assert ranks[0]["bank_labels"] == ranks[1]["bank_labels"]
    # The bank holds the label of every row of every applied step's global batch.
    written = {}
    for index, parts in enumerate(zip(*(r["batches"] for r in ranks), strict=True)):
        if index + 1 == NAN_STEP:
            continue
        for part_ids, part_labels in parts:
            written.update(zip(part_ids, part_labels, strict=True))
    bank_labels = ranks[0]["bank_labels"]
    assert written and all(bank_labels[i] == label for i, label in written.items())
    assert sum(label >= 0 for label in bank_labels) == len(written)


@pytest.mark.parametrize(("value", "finite"), [
    (1.0, True), (1e19, True), (float("nan"), False), (float("inf"), False),
    (float("-inf"), False),
])
def test_gradients_finite_sees_one_bad_element_in_any_parameter(value: float,
                                                                 finite: bool) -> None:
    from dist_contrast.train.step import gradients_finite

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model(torch.randn(5, 4)).sum().backward()
    assert gradients_finite(model.parameters())
    model[1].bias.grad[1] = value
    assert gradients_finite(model.parameters()) is finite
    assert gradients_finite([torch.nn.Parameter(torch.ones(2))])  # no gradient yet
