"""The tracker a training rank logs through: MLflow on rank 0, a null tracker everywhere else.

:class:`Tracker` is the seam the trainer sees; :func:`make_tracker` is the one rank-zero gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


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
    def start_system_metrics(self) -> None: ...
    def stop_system_metrics(self) -> None: ...
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

    def start_system_metrics(self) -> None:
        pass

    def stop_system_metrics(self) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


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
        self._tracking_uri = tracking_uri
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self._monitor: Any = None
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

    def start_system_metrics(self) -> None:
        """Sample CPU, memory, disk, network (and GPU, with ``nvidia-ml-py``) in a daemon thread
        and log them as ``system/*`` metrics. The thread dies with the process and stops by
        itself once the run is no longer RUNNING, so a failed run needs no cleanup.
        ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` sets the interval (default 10 s)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if self._monitor is not None or self.run_id is None:
            return
        # resume_logging: after a restart, continue the system/* steps instead of rewriting 0..
        self._monitor = SystemMetricsMonitor(
            self.run_id, resume_logging=True, tracking_uri=self._tracking_uri
        )
        self._monitor.start()

    def stop_system_metrics(self) -> None:
        """Stop sampling and write what is still buffered (idempotent)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()

    def close(self, status: str = "FINISHED") -> None:
        self.stop_system_metrics()  # before the run ends: its last samples still belong to it
        self._client.set_terminated(self.run_id, status=status)


def make_tracker(is_rank_zero: bool, **kwargs: Any) -> Tracker:
    """Rank 0 gets an MLflow tracker, every other rank a null one (one helper, one gate)."""
    return MlflowTracker(**kwargs) if is_rank_zero else NullTracker()

