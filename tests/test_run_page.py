"""What the driver and rank 0 give the MLflow run's page: the training data's facts computed
from the config (the driver's plan), and the system-metrics monitor's start and stop (reporting)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dist_contrast.config import Config, validate
from dist_contrast.driver.plan import resolve, summarize_data
from dist_contrast.tracking import NullTracker
from dist_contrast.train.reporting import Reporter


def _config(tmp_path: Path, **sections: Any) -> Config:
    raw = {"experiment": {"output_dir": str(tmp_path / "results"), "run_name": "r"}, **sections}
    return resolve(validate(raw, source="test"))


def test_synthetic_data_is_its_generator(tmp_path: Path) -> None:
    cfg = _config(tmp_path, data={"name": "synthetic", "num_samples": 1000, "dim": 16, "seed": 5})
    data = summarize_data(cfg).provenance
    assert (data.name, data.source_type, data.rows, data.feature_shape) == (
        "synthetic", "code", 800, (16,))
    generator = data.source["tags"]
    assert (generator["seed"], generator["num_samples"], generator["dim"]) == ("5", "1000", "16")
    assert generator["test_fraction"] == "0.2" and "num_test" not in generator
    assert data.label == "label" and data.dtype == "float32"
    other = _config(tmp_path, data={"name": "synthetic", "num_samples": 1000, "dim": 16,
                                    "seed": 6})
    assert summarize_data(other).provenance.digest != data.digest


def test_digits_use_the_run_seed(tmp_path: Path) -> None:
    cfg = _config(tmp_path, experiment={"seed": 4, "output_dir": str(tmp_path), "run_name": "r"},
                  data={"name": "digits", "num_test": 297}, model={"name": "cnn"})
    data = summarize_data(cfg).provenance
    assert (data.name, data.rows, data.feature_shape) == ("digits", 1500, (1, 8, 8))
    assert data.source["tags"]["seed"] == "4" and data.source["tags"]["num_test"] == "297"
    assert json.loads(data.profile_json()) == {"num_rows": 1500, "num_features": 64}


@pytest.mark.parametrize("labelled", [True, False])
def test_file_data_is_its_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                labelled: bool) -> None:
    monkeypatch.chdir(tmp_path)  # data.path relative to where the user runs the command
    np.save("x.npy", np.random.default_rng(0).normal(size=(40, 6)).astype(np.float64))
    np.save("y.npy", np.arange(40) % 3)
    extra = {"labels_path": "y.npy"} if labelled else {}
    cfg = _config(tmp_path, data={"name": "file", "path": "x.npy", **extra})
    data = summarize_data(cfg).provenance
    files = [tmp_path / "x.npy", *([tmp_path / "y.npy"] if labelled else [])]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    assert (data.name, data.source_type, data.digest) == ("x.npy", "local", digest)
    assert data.source["uri"] == str(tmp_path / "x.npy")
    # The trainer sees float32 features, whatever the file stored.
    assert (data.rows, data.feature_shape, data.dtype) == (32, (6,), "float32")
    assert data.label == ("label" if labelled else None)


class _Recording(NullTracker):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def start_system_metrics(self) -> None:
        self.calls.append("start")

    def stop_system_metrics(self) -> None:
        self.calls.append("stop")

    def close(self, status: str = "FINISHED") -> None:
        self.calls.append(f"close {status}")


@pytest.mark.parametrize("enabled", [True, False])
def test_rank_zero_samples_system_metrics_while_training(tmp_path: Path, enabled: bool) -> None:
    cfg = _config(tmp_path, tracking={"system_metrics": enabled})
    tracker = _Recording()
    reporter = Reporter(cfg=cfg, tracker=tracker, active=True)
    reporter.start()
    assert tracker.calls == (["start"] if enabled else [])
    reporter.finish()  # stops first (idempotent when nothing started), then ends the run
    assert tracker.calls.index("stop") < tracker.calls.index("close FINISHED")
    # Other ranks never start a monitor.
    idle = _Recording()
    Reporter(cfg=cfg, tracker=idle, active=False).start()
    assert idle.calls == []
