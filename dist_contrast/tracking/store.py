"""The MLflow tracking store: where it is, whether it is local, and the experiment in it.

The driver creates (or finds) the experiment before any worker starts; that doubles as the "is
the tracking server reachable?" check, and every way it can fail is one line naming the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dist_contrast.errors import UserError

#: The experiment tag the MLflow 3 UI reads to choose its view; "custom_model_development" is
#: the classic model-training view (runs, charts), "genai_development" the traces view. When
#: the tag is missing the UI guesses from the experiment's contents and may ask the user.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow 3's default)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    """Whether the store ``uri`` is a file on this machine (a SQLite database, a ``file:``
    folder or a plain path) rather than a server that every node can reach. Its artifacts then
    go to a local folder too, and a cluster's other nodes cannot see either."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store (``sqlite:///relative.db`` or
    ``sqlite:////absolute.db``, SQLAlchemy's spellings, query string aside), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?")[0])


def fail_fast() -> None:
    """Make MLflow's HTTP client give up on an unreachable server in seconds instead of its
    minutes of retries (settings the user made stay)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str | Path | None) -> str:
    """Create (or find) the experiment; return its id. Raises UserError if the store is
    unreachable, refuses us, or holds the experiment deleted.

    The artifact location is an absolute path so that Ray workers, whose working
    directories differ from the driver's, all write artifacts to the same place.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    fail_fast()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            experiment_id = str(client.create_experiment(name, artifact_location=location))
            experiment = client.get_experiment(experiment_id)
    except (MlflowException, OSError) as exc:
        raise _unreachable(tracking_uri, exc) from None
    if getattr(experiment, "lifecycle_stage", "active") == "deleted":
        raise deleted_experiment(tracking_uri, name, str(experiment.experiment_id))
    try:
        _mark_model_training(client, experiment)
    except (MlflowException, OSError) as exc:
        raise _unreachable(tracking_uri, exc) from None
    return str(experiment.experiment_id)


def deleted_experiment(tracking_uri: str, name: str, experiment_id: str) -> UserError:
    """One line for an experiment that was deleted (MLflow keeps its name until it is deleted
    for good, so no new experiment of that name can be made)."""
    gc = f"mlflow gc --experiment-ids {experiment_id}"
    purge = (f"delete it for good with `{gc} --backend-store-uri {tracking_uri}`"
             if is_local_store(tracking_uri)
             else f"have it deleted for good on the server (`{gc}` on its backend store)")
    return UserError(
        f"MLflow experiment '{name}' (id {experiment_id}) in '{tracking_uri}' was deleted; "
        f"restore it with `MLFLOW_TRACKING_URI={tracking_uri} mlflow experiments restore "
        f"--experiment-id {experiment_id}`, choose another tracking.experiment, or {purge}"
    )


def _unreachable(tracking_uri: str, exc: BaseException) -> UserError:
    refused = refusal(tracking_uri, exc)
    if refused is not None:
        return refused
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"cannot reach the MLflow tracking store '{tracking_uri}' ({first[:200]}); "
        "start the server or set MLFLOW_TRACKING_URI to a reachable store"
    )


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
