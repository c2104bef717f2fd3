"""Experiment tracking: MLflow on rank 0, a null tracker everywhere else.

MLflow lives only here. The driver resolves the tracking URI and creates the experiment
(which doubles as the "is the tracking server reachable?" check) before any worker starts;
rank 0 then opens the run and logs params, per-step metrics, artifacts and the summary.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from dist_contrast.errors import UserError


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_metric_history(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def last_step(self, key: str) -> int | None: ...
    def has_metric(self, key: str) -> bool: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """What every rank but 0 gets: accepts everything, writes nothing."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, str]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_metric_history(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def last_step(self, key: str) -> int | None:
        return None

    def has_metric(self, key: str) -> bool:
        return False

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's default)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str | Path | None) -> str:
    """Create (or find) the experiment; return its id. Raises UserError if the store is unreachable.

    The artifact location is an absolute path so that Ray workers, whose working
    directories differ from the driver's, all write artifacts to the same place.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    # Fail fast on an unreachable server instead of MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
        return str(client.create_experiment(name, artifact_location=location))
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot reach the MLflow tracking store '{tracking_uri}' ({first[:200]}); "
            "start the server or set MLFLOW_TRACKING_URI to a reachable store"
        ) from None


def find_run_id(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the run called ``run_name`` in ``experiment``, or None."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def open_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    *,
    continue_existing: bool,
    params: Mapping[str, str],
    config_yaml: str,
    tags: Mapping[str, str],
) -> tuple[str, bool]:
    """The MLflow run a training run logs to, opened on the driver before any worker starts.

    With ``continue_existing`` (the run's checkpoint folder exists) the run of that name is
    continued and marked RUNNING again; otherwise (or if the store has no such run) a new run
    gets the params, ``config.yaml`` and ``tags``. Returns ``(run_id, continued)``.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    if continue_existing:
        run_id = find_run_id(tracking_uri, experiment, run_name)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return run_id, True
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id
    tracker = MlflowTracker(tracking_uri, experiment, run_name, run_id=run_id)
    tracker.log_params(params)
    tracker.log_text(config_yaml, "config.yaml")
    return run_id, False


def final_metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    """The run's latest value of every metric, and ``step``: the last step logged."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    metrics = dict(client.get_run(run_id).data.metrics)
    history = client.get_metric_history(run_id, "train/loss")
    if history:
        metrics["step"] = float(max(m.step for m in history))
    return metrics


def end_run(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a run FINISHED, FAILED or KILLED unless it already ended (best effort: the store
    may be the thing that failed)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)


class MlflowTracker:
    """One MLflow run, opened on rank 0 (or resumed by id after a restart)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
    ) -> None:
        import mlflow

        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        if run_id is None:
            exp = self._client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self._client.create_experiment(experiment)
            run_id = self._client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_metric_history([(step, metrics)])

    def log_metric_history(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in as few round trips as MLflow allows (1,000 per batch)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for step, row in rows for k, v in row.items()]
        for start in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def last_step(self, key: str) -> int | None:
        """The last step at which ``key`` was logged (None if never): where a restart's
        history resumes, so that no step is logged twice."""
        history = self._client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=None)

    def has_metric(self, key: str) -> bool:
        return key in self._client.get_run(self.run_id).data.metrics

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, v)

    def close(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)


def make_tracker(is_rank_zero: bool, **kwargs: Any) -> Tracker:
    """Rank 0 gets an MLflow tracker, every other rank a null one (one helper, one gate)."""
    return MlflowTracker(**kwargs) if is_rank_zero else NullTracker()
