"""Where a run came from, as the tags of its page: the command line, LOCAL or JOB (a Ray job
submission), the user and the git commit of the working directory."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# MLflow's tag names (spelled out: importing mlflow here would slow every import of the package).
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_BRANCH = "mlflow.source.git.branch"
USER = "mlflow.user"
RAY_JOB_TAG = "dist_contrast.ray_job_id"


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

