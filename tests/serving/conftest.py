"""Shared fixtures: real checkpoints (ZeRO 0 fp32, ZeRO 2 + bf16, ZeRO 0 + bf16) written once
per session, and an MLflow run in a local SQLite store with the fp32 encoder logged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dist_contrast.data import build_data
from dist_contrast.serving import TrainedEncoder, load_encoder, log_encoder
from dist_contrast.tracking import MlflowTracker, ensure_experiment
from tests.gloo import run_distributed
from tests.serving.checkpoints import RESULTS, run_config, write_checkpoints, write_features


@dataclass(frozen=True)
class Checkpoints:
    root: Path
    features: np.ndarray  # the raw rows [ROWS, WIDTH] the runs trained on
    runs: dict[str, dict[str, Any]]  # rank 0's results of each run (see checkpoints._run)

    def path(self, name: str) -> str:
        return str(self.runs[name]["checkpoint"])


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    root = tmp_path_factory.mktemp("checkpoints")
    features = write_features(root)
    run_distributed(write_checkpoints, str(root), world_size=2)
    return Checkpoints(root, features, torch.load(root / RESULTS, weights_only=True))


@dataclass(frozen=True)
class LoggedRun:
    tracking_uri: str
    run_id: str
    model_uri: str
    registered: str  # the registered model's name (version 1)


@pytest.fixture(scope="session")
def logged_run(checkpoints: Checkpoints, tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    """The fp32 run's encoder, loaded from its checkpoint and logged as the trainer logs it."""
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    ensure_experiment(uri, "serving", store / "artifacts")
    tracker = MlflowTracker(uri, "serving", "fp32")
    loaded = load_encoder(checkpoints.path("fp32"))
    assert loaded.config is not None
    data = build_data(run_config(checkpoints.root, "fp32").data, seed=0)
    trained = TrainedEncoder(loaded.encoder, loaded.preprocessing, data.raw_example,
                             loaded.config)
    model_uri = log_encoder(trained, tracking_uri=uri, run_id=str(tracker.run_id),
                            registered_model_name="serving-encoder")
    return LoggedRun(uri, str(tracker.run_id), model_uri, "serving-encoder")
