"""Experiment tracking: MLflow on rank 0, a null tracker everywhere else.

MLflow lives only here. The driver resolves the tracking URI and creates the experiment
(which doubles as the "is the tracking server reachable?" check) before any worker starts,
opens the run with what its page shows (source, user, git commit, a description, the training
data as a dataset input) and, after the workers, adds the outcome to the description; rank 0
logs params, per-step metrics, artifacts, the summary and (optionally) system metrics.
"""

from __future__ import annotations

import ast
import contextlib
import getpass
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dist_contrast.errors import UserError

# MLflow's tag names (spelled out: importing mlflow here would slow every import of the module).
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_BRANCH = "mlflow.source.git.branch"
USER = "mlflow.user"
NOTE = "mlflow.note.content"
DATA_CONTEXT = "mlflow.data.context"
RAY_JOB_TAG = "dist_contrast.ray_job_id"
#: The experiment tag the MLflow 3 UI reads to choose its view; "custom_model_development" is
#: the classic model-training view (runs, charts), "genai_development" the traces view. When
#: the tag is missing the UI guesses from the experiment's contents and may ask the user.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: Starts the outcome paragraph of a run's description (replaced, not repeated, on a re-run).
OUTCOME = "**Outcome**: "


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
        if experiment is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            experiment_id = str(client.create_experiment(name, artifact_location=location))
            experiment = client.get_experiment(experiment_id)
        _mark_model_training(client, experiment)
        return str(experiment.experiment_id)
    except (MlflowException, OSError) as exc:
        refused = refusal(tracking_uri, exc)
        if refused is not None:
            raise refused from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot reach the MLflow tracking store '{tracking_uri}' ({first[:200]}); "
            "start the server or set MLFLOW_TRACKING_URI to a reachable store"
        ) from None


def refusal(
    tracking_uri: str, exc: BaseException, environ: Mapping[str, str] | None = None
) -> UserError | None:
    """One line for an MLflow server that answered but refused us: no or wrong credentials
    (401), a user without permission or a Host header outside its ``--allowed-hosts`` (403).
    None for any other failure."""
    env = os.environ if environ is None else environ
    text = str(exc)
    user = env.get("MLFLOW_TRACKING_USERNAME")
    if "401" in text or "UNAUTHENTICATED" in text:
        if user:
            return UserError(
                f"the MLflow server '{tracking_uri}' rejected the credentials of "
                f"MLFLOW_TRACKING_USERNAME={user} (401); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account of that server"
            )
        return UserError(
            f"the MLflow server '{tracking_uri}' requires a login (401); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if "Invalid Host header" in text:
        from urllib.parse import urlsplit

        host = urlsplit(tracking_uri).netloc
        return UserError(
            f"the MLflow server '{tracking_uri}' refused the Host header {host} (403): add it "
            "to the server's --allowed-hosts or use a host name the server allows"
        )
    if "403" in text or "PERMISSION_DENIED" in text:
        return UserError(
            f"the MLflow server '{tracking_uri}' denied {user or 'this user'} access (403); "
            "ask its admin for EDIT permission on the experiment, or use tracking.experiment "
            "to log to another one"
        )
    return None


def _mark_model_training(client: Any, experiment: Any) -> None:
    """Tag the experiment so that the MLflow 3 UI opens it in its model-training view, unless
    someone chose a kind already (theirs stays)."""
    if not experiment.tags.get(EXPERIMENT_KIND):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING_KIND)


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
) -> tuple[str, bool]:
    """The MLflow run a training run logs to, opened on the driver before any worker starts.

    With ``continue_existing`` (the run's checkpoint folder exists) the run of that name is
    continued and marked RUNNING again; otherwise (or if the store has no such run) a new run
    gets the params, ``config.yaml`` and ``tags``. Either way the run's page gets this
    invocation's source tags (``argv``, default ``sys.argv``), a description made from
    ``params`` and ``data``, and ``data`` as its training dataset. Returns
    ``(run_id, continued)``.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    story = {**source_tags(argv), NOTE: describe_run(params, data)}
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


# ----------------------------------------------------------------------- the run's page


def command_line(argv: Sequence[str]) -> str:
    """What the user typed: ``dist-contrast train configs/x.yaml key=value``, whether the CLI
    ran as the console script or as ``python -m dist_contrast.cli``; any other program keeps
    its own name."""
    if not argv:
        return "<unknown>"
    program = Path(argv[0]).name
    if program == "dist-contrast" or Path(argv[0]).parts[-2:] == ("dist_contrast", "cli.py"):
        program = "dist-contrast"
    return shlex.join([program, *argv[1:]])[:5000]  # MLflow caps a tag value at 8,000


def ray_job_id(environ: Mapping[str, str]) -> str | None:
    """The Ray job submission's id when this process is a submitted job's entrypoint, else None
    (``""`` for a job whose id is unknown)."""
    config = environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # Ray's job supervisor sets it
    if config:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return str(json.loads(config).get("metadata", {}).get("job_submission_id") or "")
        return ""
    return environ.get("RAY_JOB_ID")


def git_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """The commit (and branch) of the git checkout ``cwd`` is in; nothing when it is in none or
    git is missing."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {GIT_COMMIT: commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":  # "HEAD": a detached checkout has no branch
        tags[GIT_BRANCH] = branch
    return tags


def _user(environ: Mapping[str, str]) -> str:
    """MLflow's own choice: the tracking server's user name, else the login name."""
    if environ.get("MLFLOW_TRACKING_USERNAME"):
        return environ["MLFLOW_TRACKING_USERNAME"]
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # e.g. a container uid without a passwd entry
        return "unknown"


def source_tags(
    argv: Sequence[str] | None = None,
    cwd: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Where a run came from: the command line, LOCAL or JOB (a Ray job submission), the user
    and the git commit of the working directory."""
    env = os.environ if environ is None else environ
    job = ray_job_id(env)
    tags = {
        SOURCE_NAME: command_line(sys.argv if argv is None else argv),
        SOURCE_TYPE: "LOCAL" if job is None else "JOB",
        USER: _user(env),
    }
    if job:
        tags[RAY_JOB_TAG] = job
    return {**tags, **git_tags(cwd)}


def file_digest(*paths: str | Path, chunk: int = 1 << 20) -> str:
    """A digest of the files' bytes, read in chunks (a file may not fit in memory)."""
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                sha.update(block)
    return sha.hexdigest()[:16]  # MLflow keeps at most 36 characters; 64 bits tell files apart


def params_digest(params: Mapping[str, Any]) -> str:
    """A digest of a generator's parameters: generated data is a function of them."""
    text = json.dumps({str(k): str(v) for k, v in params.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingData:
    """The training data as the run's page records it (a dataset input, context "training"),
    in plain values: the driver computes them from the config and the data it checked.

    ``source`` is MLflow's source JSON for ``source_type``: ``{"uri": path}`` for ``local``
    files, ``{"tags": {...}}`` (the generator, its seed and size) for ``code``."""

    name: str
    source_type: str
    source: Mapping[str, Any]
    digest: str
    rows: int
    feature_shape: tuple[int, ...]
    dtype: str = "float32"
    label: str | None = None

    @classmethod
    def from_file(
        cls, path: str | Path, *, rows: int, feature_shape: tuple[int, ...],
        dtype: str = "float32", labels_path: str | Path | None = None,
        label_column: str | None = None,
    ) -> TrainingData:
        """A ``.npy`` / ``.parquet`` file (labels in a column or a second ``.npy`` file)."""
        files = [Path(path).resolve(), *([Path(labels_path).resolve()] if labels_path else [])]
        source: dict[str, str] = {"uri": str(files[0])}
        if labels_path:
            source["labels_uri"] = str(files[1])
        label = label_column or ("label" if labels_path else None)
        return cls(files[0].name, "local", source, file_digest(*files), rows, feature_shape,
                   dtype, label)

    @classmethod
    def generated(
        cls, name: str, generator: Mapping[str, Any], *, rows: int,
        feature_shape: tuple[int, ...], dtype: str = "float32", label: str | None = "label",
    ) -> TrainingData:
        """Data made by code from ``generator`` (its description, seed, size and settings)."""
        tags = {str(k): str(v) for k, v in generator.items()}
        return cls(name, "code", {"tags": tags}, params_digest({"name": name, **tags}), rows,
                   feature_shape, dtype, label)

    @property
    def num_features(self) -> int:
        return math.prod(self.feature_shape)

    def schema_json(self) -> str:
        """MLflow's tensor schema: features [-1, *shape] of ``dtype``; labels [-1] int64."""
        import numpy as np
        from mlflow.data.schema import TensorDatasetSchema
        from mlflow.types import Schema, TensorSpec

        features = Schema([TensorSpec(np.dtype(self.dtype), (-1, *self.feature_shape), "features")])
        if self.label is None:
            return json.dumps(TensorDatasetSchema(features).to_dict())
        # Labels reach the trainer as int64 class codes, whatever the file stored.
        targets = Schema([TensorSpec(np.dtype("int64"), (-1,), self.label)])
        return json.dumps(TensorDatasetSchema(features, targets).to_dict())

    def profile_json(self) -> str:
        return json.dumps({"num_rows": self.rows, "num_features": self.num_features})


def log_training_data(tracking_uri: str, run_id: str, data: TrainingData | None) -> None:
    """Record ``data`` as the run's training dataset (MLflow skips an input logged before)."""
    if data is None:
        return
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=data.name[:500], digest=data.digest, source_type=data.source_type,
        source=json.dumps(dict(data.source)), schema=data.schema_json(),
        profile=data.profile_json(),
    )
    mlflow.MlflowClient(tracking_uri=tracking_uri).log_inputs(
        run_id, [DatasetInput(dataset, [InputTag(DATA_CONTEXT, "training")])]
    )


def _temperature(params: Mapping[str, str]) -> str:
    tau, mode = params.get("loss.temperature", "?"), params.get("loss.temperature_mode", "fixed")
    if mode == "cosine":
        return f"τ = {tau} → {params.get('loss.temperature_final', '?')} (cosine)"
    if mode == "learnable":
        bounds = f"{params.get('loss.temperature_min', '?')}, {params.get('loss.temperature_max')}"
        return f"τ = {tau} (learnable in [{bounds}])"
    return f"τ = {tau} ({mode})"


def _number(text: str | None) -> str:
    """``65536`` -> ``65,536``; anything else as given."""
    try:
        return f"{int(str(text)):,}"
    except ValueError:
        return str(text)


def _negatives(params: Mapping[str, str], rows: int | None, global_batch: str) -> str:
    try:
        sources = [str(s) for s in ast.literal_eval(params.get("negatives.sources", "[]"))]
    except (ValueError, SyntaxError):
        sources = [params.get("negatives.sources", "?")]
    described = {
        "batch": f"global batch ({global_batch} keys)",
        "queue": f"queue ({_number(params.get('negatives.queue.size'))} keys, "
                 f"{params.get('negatives.queue.layout', 'replicated')})",
        "bank": f"memory bank ({_number(str(rows)) if rows else 'one per row'} keys)",
        "mined": f"mined ({params.get('negatives.miner.num_negatives', '?')} hard negatives "
                 f"per query, {params.get('negatives.miner.index', '?')})",
    }
    return " + ".join(described.get(name, name) for name in sources) or "none"


def describe_run(params: Mapping[str, str], data: TrainingData | None = None) -> str:
    """The run's description (markdown, the run page's "Description"), from the flattened
    config and the training data."""
    workers, batch = params.get("trainer.num_workers", "?"), params.get("trainer.batch_size", "?")
    try:
        global_batch = f"{int(workers) * int(batch):,}"
    except ValueError:
        global_batch = "?"
    rows = data.rows if data is not None else None
    data_line = params.get("data.name", "?")
    if data is not None:
        shape = " × ".join(str(d) for d in data.feature_shape)
        data_line = f"{data.name}: {data.rows:,} training rows × {shape} ({data.dtype})"
    return "\n".join([
        f"Contrastive training: `{params.get('loss.name', '?')}`, {_temperature(params)}.",
        "",
        f"- **Negatives**: {_negatives(params, rows, global_batch)}",
        f"- **Data**: {data_line}",
        f"- **Model**: {params.get('model.name', '?')}, "
        f"{params.get('model.embedding_dim', '?')}-d embedding",
        f"- **Workers × batch**: {workers} × {batch} = {global_batch} per step",
        f"- **Steps**: {_number(params.get('trainer.max_steps'))}",
    ])


def describe_outcome(
    status: str, metrics: Mapping[str, float], reason: str | None = None
) -> str:
    """How the run ended, in one line: the final accuracies against the raw-input baseline,
    or where it stopped, or why it failed."""
    step = metrics.get("step")
    at = f" at step {int(step):,}" if step is not None else ""
    if status == "KILLED":
        return f"stopped{at}" if at else "stopped before the first step"
    if status != "FINISHED":
        line = (str(reason or "").strip().splitlines() or [""])[0][:300] or "no reason given"
        logged = f" (last step logged: {int(step):,})" if step is not None else ""
        return f"failed: {line}{logged}"
    parts = [f"finished{at}"]
    if "eval/knn_acc" in metrics:
        raw = metrics.get("eval/raw_knn_acc")
        baseline = f" (raw input {raw:.3f})" if raw is not None else ""
        parts.append(f"kNN accuracy **{metrics['eval/knn_acc']:.3f}**{baseline}")
    if "eval/linear_probe_acc" in metrics:
        parts.append(f"linear probe **{metrics['eval/linear_probe_acc']:.3f}**")
    return ", ".join(parts[:1]) + (": " + ", ".join(parts[1:]) if parts[1:] else "")
