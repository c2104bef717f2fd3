"""MLflow tracker on a temporary sqlite store; the null tracker writes nothing."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from dist_contrast.errors import UserError
from dist_contrast.tracking import (
    MlflowTracker,
    NullTracker,
    default_tracking_uri,
    ensure_experiment,
    make_tracker,
)


def test_default_uri_is_sqlite_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert default_tracking_uri(tmp_path) == "http://example:5000"


def test_tracker_logs_params_metrics_and_text(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_experiment(uri, "exp", tmp_path / "artifacts")
    tracker = MlflowTracker(uri, "exp", run_name="r1")
    tracker.log_params({f"p{i}": str(i) for i in range(150)})  # more than one MLflow batch
    tracker.log_metrics({"train/loss": 1.5}, step=3)
    tracker.log_metrics({"train/loss": 1.0}, step=6)
    tracker.log_text("a: 1\n", "config.yaml")
    tracker.close()
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id or "")
    assert run.data.params["p149"] == "149"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [3, 6]
    assert run.info.status == "FINISHED"
    assert (tmp_path / "artifacts").exists()
    # Reopening by id continues the same run (what a resumed job does).
    again = MlflowTracker(uri, "exp", run_name="ignored", run_id=tracker.run_id)
    assert again.run_id == tracker.run_id


def test_only_rank_zero_tracks(tmp_path: Path) -> None:
    assert isinstance(make_tracker(False), NullTracker)
    null = NullTracker()
    null.log_metrics({"x": 1.0}, step=1)
    null.close()
    assert null.run_id is None


def test_unreachable_server_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot reach the MLflow tracking store"):
        ensure_experiment("http://127.0.0.1:9", "exp", None)
