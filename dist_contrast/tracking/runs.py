"""A training run's MLflow run: named, opened on the driver before any worker starts (or
continued), tagged, read back and ended with its outcome."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dist_contrast.tracking.datasets import TrainingData, log_training_data
from dist_contrast.tracking.page import NOTE, OUTCOME, describe_outcome, describe_run
from dist_contrast.tracking.sources import source_tags
from dist_contrast.tracking.trackers import MlflowTracker


def default_run_name(experiment_name: str, now: float | None = None) -> str:
    """The name of a run that ``experiment.run_name`` leaves unset: the experiment's name and
    the local time it starts, ``NAME-YYYYmmdd-HHMMSS``."""
    return f"{experiment_name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


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
    data: TrainingData | None = None,
    argv: Sequence[str] | None = None,
    negatives: str | None = None,
) -> tuple[str, bool]:
    """The MLflow run a training run logs to, opened on the driver before any worker starts.

    With ``continue_existing`` (the run's checkpoint folder exists) the run of that name is
    continued and marked RUNNING again; otherwise (or if the store has no such run) a new run
    gets the params, ``config.yaml`` and ``tags``. Either way the run's page gets this
    invocation's source tags (``argv``, default ``sys.argv``), a description made from
    ``params``, ``data`` and ``negatives`` (the sources as they describe themselves), and
    ``data`` as its training dataset. Returns
    ``(run_id, continued)``.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    story = {**source_tags(argv), NOTE: describe_run(params, data, negatives)}
    if continue_existing:
        run_id = find_run_id(tracking_uri, experiment, run_name)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            _set_run_tags(client, run_id, story)  # a fresh description: no stale outcome
            log_training_data(tracking_uri, run_id, data)
            return run_id, True
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(
        experiment_id, run_name=run_name, tags={**story, **tags}
    ).info.run_id
    tracker = MlflowTracker(tracking_uri, experiment, run_name, run_id=run_id)
    tracker.log_params(params)
    tracker.log_text(config_yaml, "config.yaml")
    log_training_data(tracking_uri, run_id, data)
    return run_id, False



def set_run_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    """Tags on a run that is open or ended (best effort, like ``end_run``)."""
    import mlflow

    with contextlib.suppress(Exception):
        _set_run_tags(mlflow.MlflowClient(tracking_uri=tracking_uri), run_id, tags)


def _set_run_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def final_metrics(tracking_uri: str, run_id: str) -> dict[str, float]:
    """The run's latest value of every metric, and ``step``: the last step logged."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    metrics = dict(client.get_run(run_id).data.metrics)
    history = client.get_metric_history(run_id, "train/loss")
    if history:
        metrics["step"] = float(max(m.step for m in history))
    return metrics


def end_run(tracking_uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """Mark a run FINISHED, FAILED or KILLED unless it already ended, and end its description
    with the outcome (``reason``: why it failed, one line). Best effort: the store may be the
    thing that failed."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)
    with contextlib.suppress(Exception):
        run = client.get_run(run_id)
        # The status the run ended with (rank 0 may have marked it FINISHED first).
        outcome = describe_outcome(run.info.status, final_metrics(tracking_uri, run_id), reason)
        note = run.data.tags.get(NOTE, "").split(OUTCOME)[0].rstrip()
        client.set_tag(run_id, NOTE, f"{note}\n\n{OUTCOME}{outcome}".lstrip())

