"""A sweep's runs: one parent run, found again when the same sweep runs again, and its
children."""

from __future__ import annotations

from collections.abc import Mapping

from dist_contrast.errors import UserError
from dist_contrast.tracking.sources import source_tags
from dist_contrast.tracking.trackers import MlflowTracker

#: Tags of a sweep: the parent is marked, named and fingerprinted; children carry the parent.
SWEEP_TAG = "dist_contrast.sweep"
SWEEP_NAME_TAG = "dist_contrast.sweep.name"
SWEEP_DIGEST_TAG = "dist_contrast.sweep.digest"
PARENT_TAG = "mlflow.parentRunId"
ERROR_TAG = "dist_contrast.error"


def open_sweep_parent(
    tracking_uri: str, experiment: str, name: str, *, digest: str,
    params: Mapping[str, str], tags: Mapping[str, str],
) -> tuple[str, bool]:
    """The parent run of the sweep ``name``: found again (and marked RUNNING) when the same
    sweep runs again, else created with ``params`` and ``tags``. Returns ``(run_id, resumed)``.
    A sweep of that name with other trials (another ``digest``) is a ``UserError``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, "ensure_experiment runs first"
    existing = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = 'true' and tags.`{SWEEP_NAME_TAG}` = '{name}'",
        max_results=1,
    )
    if existing:
        run = existing[0]
        if run.data.tags.get(SWEEP_DIGEST_TAG) != digest:
            raise UserError(
                f"experiment '{experiment}' already has a sweep named '{name}' with other "
                f"trials (run {run.info.run_id}); give this one another --name, or the same "
                "configs, grid and seeds to resume that one"
            )
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, True
    story = {**source_tags(None), SWEEP_TAG: "true", SWEEP_NAME_TAG: name,
             SWEEP_DIGEST_TAG: digest}
    run_id = client.create_run(found.experiment_id, run_name=name,
                               tags={**story, **tags}).info.run_id
    MlflowTracker(tracking_uri, experiment, name, run_id=run_id).log_params(params)
    return run_id, False


def sweep_children(tracking_uri: str, parent_id: str) -> dict[str, tuple[str, str]]:
    """The parent's children by run name: ``{name: (run_id, status)}`` (the newest of a name)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_id)
    children: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000,
                                  page_token=token)
        for run in page:
            children[run.info.run_name] = (run.info.run_id, run.info.status)
        token = page.token
        if not token:
            return children

