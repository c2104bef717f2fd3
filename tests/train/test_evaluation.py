"""Evaluation survives an encoder that puts out NaN: one metric says so, nothing crashes."""

from __future__ import annotations

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
