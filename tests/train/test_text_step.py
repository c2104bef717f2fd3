"""The step on text pairs, with real DeepSpeed engines: the loss is InfoNCE of the queries against
the positives and the file's hard negatives encoded by the document tower (checked by hand at
the first step), the negatives get a gradient, and two gloo ranks of 4 rows each give the loss
and the update of one process with all 8 rows (the keys' order differs; the loss does not)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.data.helpers import write_text_pairs
from tests.gloo import run_distributed

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROWS_PER_RANK = 4


def _step_run(path: str, world_size: int, overrides: list[str]) -> dict[str, Any]:
    """Three steps on rows [0, 8) split over the ranks; the first loss, the hand-computed
    first loss and the weights after the third step."""
    from dist_contrast import dist
    from dist_contrast.config import load_config
    from dist_contrast.data import build_data
    from dist_contrast.models import build_model
    from dist_contrast.models.build import fit_featurizer
    from dist_contrast.train.worker import build_engine, build_step

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())
    batch_size = 2 * ROWS_PER_RANK // world_size
    cfg = load_config(CONFIGS / "codesearch.yaml", [
        f"data.path={path}", "data.eval_path=null", "data.params={hard_negatives: 1}",
        "data.num_test=8", "model.hidden_dim=16", "model.embedding_dim=8",
        "model.vocab_size=64", "model.hash_buckets=128", "model.query_max_length=8",
        "model.document_max_length=16", "optimizer.warmup_steps=0", "optimizer.lr=0.05",
        f"trainer.num_workers={world_size}", f"trainer.batch_size={batch_size}",
        "trainer.max_steps=3", "model.batch_norm=false", *overrides,
    ])
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    encoder = build_model(cfg.model, data.input_shape)
    fit_featurizer(encoder, cfg.model, data.train.texts())
    engine = build_engine(cfg, encoder)
    step = build_step(cfg, engine, data, encoder)
    rows = list(range(dist.rank() * batch_size, (dist.rank() + 1) * batch_size))
    batch = data.train.collate(data.train.__getitems__(rows))
    with torch.no_grad():  # the loss by hand, from the weights before the step
        query = encoder(batch["view1"], side="query")
        keys = encoder(batch["view2"] + batch["negatives"], side="document")
        by_hand = float(F.cross_entropy(query @ keys.T / 0.05, torch.arange(len(rows))))
    def flat() -> np.ndarray:
        return torch.cat([p.detach().flatten()
                          for p in engine.module.encoder.parameters()]).numpy().copy()

    before = flat()
    metrics = step(batch, 0)
    for index in (1, 2):  # the schedule's first steps have no learning rate yet
        step(batch, index)
    weights = flat()
    assert not np.allclose(before, weights)
    return {"loss": metrics["train/loss"], "by_hand": by_hand, "weights": weights,
            "negatives": len(batch["negatives"])}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_text_pairs(tmp_path_factory.mktemp("pairs") / "p.jsonl", 40, negatives=2))


def test_the_first_loss_is_infonce_over_positives_and_file_negatives(pairs: str) -> None:
    (one,) = run_distributed(_step_run, pairs, 1, [], world_size=1)
    assert one["negatives"] == 8
    assert one["loss"] == pytest.approx(one["by_hand"], rel=1e-5)
    (without,) = run_distributed(_step_run, pairs, 1, ["data.params={hard_negatives: 0}"],
                                 world_size=1)
    assert without["negatives"] == 0 and without["loss"] < one["loss"]  # fewer keys, lower loss
    assert not np.allclose(without["weights"], one["weights"])  # negatives moved the weights


@pytest.mark.parametrize("overrides", [[], ["loss.symmetric=true", "model.towers=separate"]],
                         ids=["one-way", "symmetric-two-towers"])
def test_two_ranks_give_the_one_process_step(pairs: str, overrides: list[str]) -> None:
    (one,) = run_distributed(_step_run, pairs, 1, overrides, world_size=1)
    two = run_distributed(_step_run, pairs, 2, overrides, world_size=2)
    assert np.mean([r["loss"] for r in two]) == pytest.approx(one["loss"], rel=1e-5)
    np.testing.assert_allclose(two[0]["weights"], two[1]["weights"])
    # float32 sums in another order, through three Adam steps
    np.testing.assert_allclose(two[0]["weights"], one["weights"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", [[], ["loss.symmetric=true", "model.towers=separate"]],
                         ids=["one-way", "symmetric-two-towers"])
def test_gradcache_encodes_queries_positives_and_file_negatives_in_chunks(
    pairs: str, overrides: list[str],
) -> None:
    """Two ranks with GradCache (chunks of 3: the 2 + 4 documents of a rank split unevenly)
    take the step two ranks take without it."""
    plain = run_distributed(_step_run, pairs, 2, overrides, world_size=2)
    cached = run_distributed(_step_run, pairs, 2,
                             [*overrides, "trainer.grad_cache={chunk_size: 3}"], world_size=2)
    for mine, reference in zip(cached, plain, strict=True):
        assert mine["loss"] == pytest.approx(reference["loss"], rel=1e-6)
        np.testing.assert_allclose(mine["weights"], reference["weights"], rtol=1e-5, atol=1e-6)
