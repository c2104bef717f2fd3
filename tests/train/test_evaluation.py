"""Evaluation survives an encoder that puts out NaN: one metric says so, nothing crashes; the
local separation and the collapse alarm on closed forms; the final figures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dist_contrast.config import Config
from dist_contrast.data import build_data
from dist_contrast.models import build_model
from dist_contrast.train.evaluation import Evaluator


def _setup() -> tuple[Config, Evaluator, nn.Module]:
    cfg = Config.model_validate({
        "data": {"name": "synthetic", "num_samples": 300, "dim": 16, "signal_dim": 4},
        "model": {"name": "mlp", "hidden_dim": 16, "num_layers": 1, "embedding_dim": 8},
        "trainer": {"num_workers": 1, "batch_size": 16, "max_steps": 10},
        "optimizer": {"warmup_steps": 2},
        "eval": {"knn_k": 5},
    })
    data = build_data(cfg.data, seed=0)
    return cfg, Evaluator(cfg, data, torch.device("cpu")), build_model(cfg.model, data.input_shape)


def test_a_finite_encoder_gets_every_metric() -> None:
    _, evaluator, model = _setup()
    results = evaluator.evaluate(model, step=10)  # the last step: with the linear probe
    assert {"eval/knn_acc", "eval/uniformity", "eval/linear_probe_acc"} <= set(results)
    assert "eval/nonfinite_embeddings" not in results


def test_nan_embeddings_are_reported_not_crashed_on() -> None:
    _, evaluator, model = _setup()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    results = evaluator.evaluate(model, step=10)
    assert results == {"eval/nonfinite_embeddings": 1.0}


class _ArtifactSizes:
    """A tracker that records the size of each logged artifact, by ``plots/<name>``."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.sizes[f"{artifact_path}/{Path(path).name}"] = Path(path).stat().st_size


def test_evaluation_logs_separation_and_the_collapse_alarm() -> None:
    _, evaluator, model = _setup()
    results = evaluator.evaluate(model, step=5)
    for name in ("eval/local_separation", "eval/local_separation_p10",
                 "eval/positive_similarity", "eval/mean_similarity", "eval/collapsed"):
        assert math.isfinite(results[name]), name
    assert results["eval/local_separation_p10"] <= results["eval/local_separation"]
    assert results["eval/collapsed"] in (0.0, 1.0)


def test_local_separation_of_view_pairs_closed_form() -> None:
    _, evaluator, _ = _setup()
    e1, e2 = torch.eye(2)
    first = torch.stack([e1, e2])
    second = torch.stack([e1, (e1 + e2) / math.sqrt(2)])
    # s = first·secondᵀ = [[1, 1/√2], [0, 1/√2]]: separations 1 − 1/√2 and 1/√2 − 0.
    low, high = 1 - 1 / math.sqrt(2), 1 / math.sqrt(2)
    spread = torch.stack([e1, -e1, e2, -e2])  # mean pairwise cosine −1/3
    results = evaluator._separation_and_collapse(first, second, spread)
    assert results["eval/local_separation"] == pytest.approx(0.5)
    assert results["eval/local_separation_p10"] == pytest.approx(low + 0.1 * (high - low))
    assert results["eval/positive_similarity"] == pytest.approx((1 + high) / 2)
    assert results["eval/mean_similarity"] == pytest.approx(-1 / 3)
    assert results["eval/collapsed"] == 0.0
    collapsed = e1 + 0.01 * torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    assert evaluator._separation_and_collapse(first, second, collapsed)["eval/collapsed"] == 1.0


def test_final_plots_are_non_empty_pngs() -> None:
    _, evaluator, model = _setup()
    evaluator.evaluate(model, step=10)
    tracker = _ArtifactSizes()
    evaluator.log_plots(tracker)
    assert tracker.sizes["plots/similarities.png"] > 1000
    assert tracker.sizes["plots/embeddings.png"] > 1000
