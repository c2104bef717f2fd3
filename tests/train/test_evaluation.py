"""Evaluation survives an encoder that puts out NaN: one metric says so, nothing crashes; the
local separation and the collapse alarm on closed forms; the final figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from torch import nn

from dist_contrast.config import Config
from dist_contrast.data import build_data
from dist_contrast.models import build_model
from dist_contrast.tracking import NullTracker
from dist_contrast.train.evaluation import Evaluator
from dist_contrast.train.reporting import Reporter


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


def test_the_paper_sign_of_uniformity_and_tolerance_beside_the_mean_similarity() -> None:
    _, evaluator, model = _setup()
    results = evaluator.evaluate(model, step=5)
    assert results["eval/uniformity_paper"] == -results["eval/uniformity"]
    assert results["eval/tolerance_minus_mean"] == pytest.approx(
        results["eval/tolerance"] - results["eval/mean_similarity"])
    # An MLP without BatchNorm has no second set of statistics to evaluate with.
    assert not any(key.startswith("eval/clean_bn/") for key in results)


def test_batchnorm_is_also_evaluated_with_the_clean_inputs_statistics() -> None:
    cfg = Config.model_validate({
        "data": {"name": "digits", "test_fraction": 0.25},
        "model": {"name": "cnn", "embedding_dim": 16, "batch_norm": True},
        "trainer": {"num_workers": 1, "batch_size": 16, "max_steps": 10},
        "eval": {"knn_k": 5},
    })
    data = build_data(cfg.data, seed=0)
    evaluator = Evaluator(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # Running statistics far from the clean digits' (as after training on augmented views).
    for norm in norms:
        norm.running_mean.fill_(3.0)
    before = [norm.running_mean.clone() for norm in norms]
    results = evaluator.evaluate(model, step=5)
    clean = {key for key in results if key.startswith("eval/clean_bn/")}
    assert clean == {"eval/clean_bn/knn_acc", "eval/clean_bn/uniformity",
                     "eval/clean_bn/uniformity_paper", "eval/clean_bn/tolerance",
                     "eval/clean_bn/tolerance_minus_mean"}
    assert results["eval/clean_bn/uniformity"] != results["eval/uniformity"]
    # The encoder keeps its own statistics.
    for norm, kept in zip(norms, before, strict=True):
        torch.testing.assert_close(norm.running_mean, kept)
    # The copy's statistics are the clean rows' own: the first BatchNorm layer's mean is the
    # mean of what reaches it from those rows.
    from dist_contrast.train.evaluation import _with_clean_statistics

    clean_copy = _with_clean_statistics(model, evaluator.memory[0], torch.device("cpu"))
    first = [m for m in clean_copy.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][0]
    reached: list[torch.Tensor] = []
    handle = first.register_forward_pre_hook(lambda _, args: reached.append(args[0]))
    with torch.no_grad():
        clean_copy(evaluator.memory[0].float())
    handle.remove()
    dims = [0, *range(2, reached[0].dim())]
    torch.testing.assert_close(first.running_mean, reached[0].mean(dim=dims), rtol=1e-4,
                               atol=1e-5)


class _Metrics(NullTracker):
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.logged.append((step, dict(metrics)))


@pytest.mark.parametrize("at_start", [False, True])
def test_eval_at_start_evaluates_the_untrained_encoder_at_step_0(at_start: bool) -> None:
    cfg, evaluator, model = _setup()
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"at_start": at_start})})
    tracker = _Metrics()
    Reporter(cfg=cfg, tracker=tracker, evaluator=evaluator, active=True).start(model)
    at_zero = {key for step, metrics in tracker.logged if step == 0 for key in metrics}
    assert "eval/raw_knn_acc" in at_zero
    assert ("eval/knn_acc" in at_zero) == at_start
    assert ("eval/uniformity" in at_zero) == at_start
