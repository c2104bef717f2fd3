"""Experiment tracking: MLflow on rank 0, a null tracker everywhere else.

MLflow lives only here. The driver resolves the tracking URI and creates the experiment
(which doubles as the "is the tracking server reachable?" check) before any worker starts,
opens the run with what its page shows (source, user, git commit, a description, the training
data as a dataset input) and, after the workers, adds the outcome to the description; rank 0
logs params, per-step metrics, artifacts, the summary and (optionally) system metrics.

One module per concern, each re-exported here (``from dist_contrast.tracking import X``):

* ``store``: the tracking URI, whether the store is local, the experiment (created, found,
  refused in one line);
* ``trackers``: the :class:`Tracker` seam, :class:`NullTracker`, :class:`MlflowTracker`,
  :func:`make_tracker`;
* ``runs``: a training run's MLflow run, from its default name to its end;
* ``sweeps``: a sweep's parent run and its children;
* ``page``: the run's description and outcome;
* ``datasets``: the training data as a dataset input, and the digests that identify it;
* ``sources``: where a run came from (command line, user, git commit, Ray job).

Importing the package does not import MLflow: each function imports it when it runs.
"""

from dist_contrast.tracking.datasets import (
    DATA_CONTEXT,
    TrainingData,
    file_digest,
    log_training_data,
    params_digest,
)
from dist_contrast.tracking.page import NOTE, OUTCOME, describe_outcome, describe_run
from dist_contrast.tracking.runs import (
    default_run_name,
    end_run,
    final_metrics,
    find_run_id,
    open_run,
    set_run_tags,
)
from dist_contrast.tracking.sources import (
    GIT_BRANCH,
    GIT_COMMIT,
    RAY_JOB_TAG,
    SOURCE_NAME,
    SOURCE_TYPE,
    USER,
    command_line,
    git_tags,
    ray_job_id,
    source_tags,
)
from dist_contrast.tracking.store import (
    EXPERIMENT_KIND,
    MODEL_TRAINING_KIND,
    default_tracking_uri,
    deleted_experiment,
    ensure_experiment,
    fail_fast,
    is_local_store,
    refusal,
    sqlite_path,
)
from dist_contrast.tracking.sweeps import (
    ERROR_TAG,
    PARENT_TAG,
    SWEEP_DIGEST_TAG,
    SWEEP_NAME_TAG,
    SWEEP_TAG,
    open_sweep_parent,
    sweep_children,
)
from dist_contrast.tracking.trackers import MlflowTracker, NullTracker, Tracker, make_tracker

__all__ = [
    "DATA_CONTEXT",
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "GIT_BRANCH",
    "GIT_COMMIT",
    "MODEL_TRAINING_KIND",
    "NOTE",
    "OUTCOME",
    "PARENT_TAG",
    "RAY_JOB_TAG",
    "SOURCE_NAME",
    "SOURCE_TYPE",
    "SWEEP_DIGEST_TAG",
    "SWEEP_NAME_TAG",
    "SWEEP_TAG",
    "USER",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "TrainingData",
    "command_line",
    "default_run_name",
    "default_tracking_uri",
    "deleted_experiment",
    "describe_outcome",
    "describe_run",
    "end_run",
    "ensure_experiment",
    "fail_fast",
    "file_digest",
    "final_metrics",
    "find_run_id",
    "git_tags",
    "is_local_store",
    "log_training_data",
    "make_tracker",
    "open_run",
    "open_sweep_parent",
    "params_digest",
    "ray_job_id",
    "refusal",
    "set_run_tags",
    "source_tags",
    "sqlite_path",
    "sweep_children",
]
