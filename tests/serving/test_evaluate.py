"""``dist-contrast evaluate``: the trainer's measures of a trained encoder, on its own data or
on new data through the encoder's own preprocessing, logged as a new tagged MLflow run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from dist_contrast.data import build_data
from dist_contrast.errors import UserError
from dist_contrast.serving import load_encoder
from dist_contrast.serving.evaluate import evaluation_config, run_evaluation
from dist_contrast.train.evaluation import Evaluator
from tests.conftest import Cli
from tests.serving.conftest import Checkpoints

# The session's trained checkpoints (or run) are made once per pytest-xdist process: one process
# for the module (make check runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("serving_checkpoints")

ROOT = Path(__file__).resolve().parents[2]


def test_evaluating_the_training_data_gives_the_trainers_measures(
    checkpoints: Checkpoints, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_evaluation(checkpoints.path("fp32"), [], tracking_uri=uri, run_name="eval")
    # By hand: the evaluator on the run's own data with the loaded encoder.
    loaded = load_encoder(checkpoints.path("fp32"))
    cfg = evaluation_config(loaded, [])
    evaluator = Evaluator(cfg, build_data(cfg.data, seed=cfg.experiment.seed),
                          torch.device("cpu"))
    expected = {**evaluator.raw_baseline(),
                **evaluator.evaluate(loaded.encoder, step=cfg.trainer.max_steps)}
    assert done.metrics == pytest.approx(expected, nan_ok=True)  # tolerance: no same-label pair
    assert {"eval/knn_acc", "eval/linear_probe_acc", "eval/uniformity", "eval/alignment",
            "eval/tolerance", "eval/raw_knn_acc"} <= set(done.metrics)

    run = mlflow.MlflowClient(tracking_uri=uri).get_run(done.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "eval"
    assert run.data.tags["dist_contrast.evaluates_source"] == checkpoints.path("fp32")
    assert run.data.metrics["eval/knn_acc"] == pytest.approx(done.metrics["eval/knn_acc"])


def test_new_data_goes_through_the_encoders_own_preprocessing(
    checkpoints: Checkpoints, tmp_path: Path
) -> None:
    shifted = checkpoints.features[::-1].copy() + 5.0  # other rows, other statistics
    np.save(tmp_path / "new.npy", shifted)
    loaded = load_encoder(checkpoints.path("fp32"))
    cfg = evaluation_config(loaded, [f"data.path={tmp_path / 'new.npy'}",
                                     "data.labels_path=null"])
    data = build_data(cfg.data, seed=cfg.experiment.seed, preprocessing=loaded.preprocessing)
    raw = build_data(cfg.data.model_copy(update={"standardize": False}), seed=0)
    torch.testing.assert_close(data.eval_test[0], loaded.preprocessing.apply(raw.eval_test[0]))


def test_a_dataset_of_another_width_is_one_line(checkpoints: Checkpoints,
                                                tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((50, 5), dtype=np.float32))
    with pytest.raises(UserError, match="encoder takes 12") as caught:
        run_evaluation(checkpoints.path("fp32"), [f"data.path={tmp_path / 'wide.npy'}",
                                                   "data.labels_path=null"],
                       tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert "\n" not in str(caught.value)


def test_the_real_cli(checkpoints: Checkpoints, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = Cli().run("evaluate", checkpoints.path("fp32"), "--output", "representation",
                     "--tracking-uri", uri, cwd=tmp_path, store=None, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval/knn_acc" in proc.stdout and "MLflow run" in proc.stdout
    (run,) = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("dist-contrast")
         .experiment_id])
    assert run.data.tags["dist_contrast.evaluation_output"] == "representation"
