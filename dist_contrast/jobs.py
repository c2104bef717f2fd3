"""Ray jobs: ``dist-contrast submit`` and ``dist-contrast jobs`` over Ray's job API.

Built on ``ray.job_submission.JobSubmissionClient`` (what ``ray job submit`` uses). A submission
is checked here first: the config and its overrides are validated and resolved (a mistake is one
line, exit 2, and nothing is sent), the runtime environment file is read, and the job's
working directory is a fresh folder that holds only the resolved config, so that the job's
entrypoint is ``dist-contrast train experiment.yaml``. The code comes from the runtime
environment (``py_modules``: the package as it is here) or from the cluster's image.

Ray's token authentication (:mod:`dist_contrast.driver.address`, shared with ``train``): the
token comes from ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token`` (Ray's own order); it is sent only when one of them has it, and never
printed. A cluster that wants a token and gets none, or gets the wrong
one, is one line saying which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dist_contrast.config import Config, load_config, to_yaml
from dist_contrast.driver.address import (
    HOW_TO_GET_TOKEN,
    enable_token_auth_if_available,
    job_server_address,
)
from dist_contrast.errors import RunFailed, UserError
from dist_contrast.tracking import default_run_name, is_local_store

#: The runtime environment ``submit`` uses when ``--runtime-env`` is not given and this file
#: exists under the current directory (a checkout of the repository).
DEFAULT_RUNTIME_ENV = Path("launch") / "runtime_env.yaml"
#: The resolved config's name in the job's working directory.
CONFIG_NAME = "experiment.yaml"
#: Variables passed from the submitting shell to the job when the runtime environment does not
#: set them: the tracking server and its credentials (they travel in the job's runtime
#: environment, readable by whoever holds the cluster's token).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
#: Seconds Ray waits after SIGTERM before it SIGKILLs a stopped job's driver (Ray's default is
#: 3): time for the workers to finish the step, save a checkpoint and mark the run KILLED.
STOP_WAIT_S = "60"
#: What ``submit`` and ``jobs stop`` wait for a stopped job to end.
STOP_TIMEOUT_S = 120.0
#: Runtime environment keys ``submit`` owns or refuses.
OWNED_KEYS = ("working_dir",)
METADATA_RUN = "dist_contrast.run_name"
METADATA_EXPERIMENT = "dist_contrast.experiment"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# ----------------------------------------------------------------------------- connection


class JobServer:
    """A connected ``JobSubmissionClient`` whose failures are one line each."""

    def __init__(self, address: str | None = None) -> None:
        self.address = job_server_address(address)
        # Ray's client sends the token only in token mode, read when Ray is imported.
        self.token_from = enable_token_auth_if_available()
        from ray.job_submission import JobSubmissionClient

        # Ray's INFO lines ("Uploading package ...") would bury ours; its job client modules
        # set their loggers to INFO when imported.
        for name in ("ray", "ray.dashboard.modules.dashboard_sdk",
                     "ray.dashboard.modules.job.sdk"):
            logging.getLogger(name).setLevel(logging.WARNING)

        with self.errors():
            self.client = JobSubmissionClient(self.address)

    @contextlib.contextmanager
    def errors(self, job_id: str | None = None) -> Iterator[None]:
        """Turn the job server's failures into one :class:`UserError` line."""
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as exc:
            raise self._auth_error(str(exc)) from None
        except ConnectionError as exc:
            raise UserError(
                f"cannot reach the Ray job server at {self.address} ({_first_line(exc)}); "
                "start the cluster or forward its port 8265, or pass --address"
            ) from None
        except RuntimeError as exc:
            text = str(exc)
            if job_id is not None and ("404" in text or "does not exist" in text):
                raise UserError(
                    f"no job {job_id} on the Ray cluster at {self.address}; "
                    "`dist-contrast jobs list` shows its jobs"
                ) from None
            raise UserError(f"the Ray job server at {self.address} refused the request: "
                            f"{_first_line(exc)}") from None

    def _auth_error(self, text: str) -> UserError:
        if "Authentication failed" in text or "invalid or incorrect" in text:  # 403
            return UserError(
                f"the Ray cluster at {self.address} rejected the token from {self.token_from}: "
                f"it is not this cluster's token; use the cluster's token ({HOW_TO_GET_TOKEN})"
            )
        return UserError(  # 401, or token mode without any token
            f"the Ray cluster at {self.address} requires an auth token and none was found: set "
            f"RAY_AUTH_TOKEN or write it to ~/.ray/auth_token ({HOW_TO_GET_TOKEN})"
        )

    # Plain calls, each with its errors translated.

    def status(self, job_id: str) -> str:
        with self.errors(job_id):
            return str(self.client.get_job_status(job_id))

    def info(self, job_id: str) -> Any:
        with self.errors(job_id):
            return self.client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        with self.errors(job_id):
            return str(self.client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        with self.errors(job_id):
            return bool(self.client.stop_job(job_id))

    def jobs(self) -> list[Any]:
        with self.errors():
            return [j for j in self.client.list_jobs() if j.submission_id]

    def follow(self, job_id: str, out: Any = None) -> str:
        """Print the job's logs as they come until it ends; return its final status."""
        out = out or sys.stdout

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()

        with self.errors(job_id):
            try:
                asyncio.run(tail())
            except RuntimeError as exc:  # the log stream closed early: poll instead
                if "does not exist" in str(exc) or "404" in str(exc):
                    raise
        return self.wait(job_id, timeout=None)

    def wait(self, job_id: str, timeout: float | None) -> str:
        """Poll until the job is in a terminal state (or ``timeout`` seconds pass)."""
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        status = self.status(job_id)
        while status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1.0)
            status = self.status(job_id)
        return status


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


# ----------------------------------------------------------------------------- submission


def load_runtime_env(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The runtime environment of a submission and where it came from.

    ``path`` None: :data:`DEFAULT_RUNTIME_ENV` when it exists here, else an empty one (the
    cluster's installed package). Relative local paths in ``py_modules`` are relative to the
    file. ``working_dir`` is refused: the job's working directory holds the resolved config.
    """
    if path is None:
        if not DEFAULT_RUNTIME_ENV.is_file():
            return {}, "none (the package installed on the cluster)"
        path = DEFAULT_RUNTIME_ENV
    file = Path(path)
    try:
        loaded = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise UserError(f"--runtime-env {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--runtime-env {path} is not valid YAML ({_first_line(exc)})") from None
    env = loaded if loaded is not None else {}
    if not isinstance(env, dict):
        raise UserError(f"--runtime-env {path} must be a mapping of Ray runtime_env keys "
                        "(py_modules, pip, env_vars, ...)")
    for key in OWNED_KEYS:
        if key in env:
            raise UserError(
                f"--runtime-env {path} sets {key}: dist-contrast submit makes the job's "
                f"working directory itself (it holds the resolved config); ship code with "
                "py_modules and keep data where every node reaches it"
            )
    env_vars = env.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        raise UserError(f"--runtime-env {path}: env_vars must be a mapping of NAME: value")
    env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    modules = env.get("py_modules")
    if modules is not None:
        if not isinstance(modules, list):
            raise UserError(f"--runtime-env {path}: py_modules must be a list")
        env["py_modules"] = [_local_module(file, str(m)) for m in modules]
    return env, str(path)


def _local_module(env_file: Path, module: str) -> str:
    if "://" in module:  # a remote package (s3://, gs://, https://): Ray fetches it
        return module
    resolved = (env_file.parent / module).resolve()
    if not resolved.exists():
        raise UserError(f"--runtime-env {env_file}: py_modules entry {module} does not exist "
                        f"(looked for {resolved}); paths are relative to the file")
    return str(resolved)


@dataclass
class Submission:
    """What is sent: the entrypoint, its runtime environment and metadata, plus notes."""

    cfg: Config
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)


def prepare(
    config: str, overrides: list[str], runtime_env: dict[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Submission:
    """Validate the config (one line, exit 2, on a mistake) and build the submission."""
    env = os.environ if environ is None else environ
    cfg = load_config(config, overrides)
    run_name = cfg.experiment.run_name or default_run_name(cfg.experiment.name)
    cfg = cfg.model_copy(update={
        "experiment": cfg.experiment.model_copy(update={"run_name": run_name}),
    })
    runtime = {**runtime_env, "env_vars": dict(runtime_env.get("env_vars") or {})}
    env_vars = runtime["env_vars"]
    passed = [name for name in FORWARDED_ENV if name not in env_vars and env.get(name)]
    env_vars.update({name: env[name] for name in passed})
    env_vars.setdefault("RAY_JOB_STOP_WAIT_TIME_S", STOP_WAIT_S)
    notes = []
    if passed:  # values stay unprinted, but for the server's address
        shown = [f"{n}={env[n]}" if n == "MLFLOW_TRACKING_URI" else n for n in passed]
        notes.append(f"passing {', '.join(shown)} from this shell to the job")
    uri = cfg.tracking.tracking_uri or env_vars.get("MLFLOW_TRACKING_URI")
    if not uri:
        notes.append(
            "no MLFLOW_TRACKING_URI goes with the job: it logs where the cluster's nodes say "
            "(the RayCluster of k8s/ sets the MLflow server), else to sqlite:///mlflow.db in "
            "its working directory on the head node; set MLFLOW_TRACKING_URI to an MLflow "
            "server to be sure"
        )
    elif is_local_store(uri):
        notes.append(
            f"the job logs to {uri} on the head node, which other nodes and you may not reach; "
            "set MLFLOW_TRACKING_URI to an MLflow server (see the README, From laptop to cluster)"
        )
    return Submission(
        cfg=cfg,
        entrypoint=shlex.join(["dist-contrast", "train", CONFIG_NAME]),
        runtime_env=runtime,
        metadata={METADATA_RUN: run_name, METADATA_EXPERIMENT: cfg.tracking.experiment},
        notes=notes,
    )


def submit(
    config: str, overrides: list[str], *, address: str | None = None,
    runtime_env_path: str | None = None, wait: bool = True,
) -> int:
    """``dist-contrast submit``: the exit status (0 SUCCEEDED, 1 FAILED, 130 stopped)."""
    load_config(config, overrides)  # a bad config: one line, exit 2, before anything else
    runtime_env, env_from = load_runtime_env(runtime_env_path)
    submission = prepare(config, overrides, runtime_env)
    server = JobServer(address)
    for note in submission.notes:
        print(f"dist-contrast: note: {note}", flush=True)
    staging = Path(tempfile.mkdtemp(prefix="dist-contrast-job-"))
    try:
        (staging / CONFIG_NAME).write_text(to_yaml(submission.cfg))
        with server.errors():
            job_id = server.client.submit_job(
                entrypoint=submission.entrypoint,
                runtime_env={**submission.runtime_env, "working_dir": str(staging)},
                metadata=submission.metadata,
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    run = submission.metadata[METADATA_RUN]
    print(f"submitted job {job_id} to {server.address} (runtime env: {env_from})")
    print(f"  dashboard : {server.address} (Jobs: {job_id})")
    print(f"  MLflow run: {run} in experiment {submission.cfg.tracking.experiment}")
    if not wait:
        print(f"  follow it : dist-contrast jobs logs {job_id} --follow --address {server.address}")
        return 0
    print("  following its logs (Ctrl-C stops the job) ...", flush=True)
    try:
        status = server.follow(job_id)
    except KeyboardInterrupt:
        print(f"\ndist-contrast: Ctrl-C: stopping job {job_id} ...", file=sys.stderr, flush=True)
        try:
            server.stop(job_id)
            status = server.wait(job_id, timeout=STOP_TIMEOUT_S)
        except KeyboardInterrupt:
            print(f"dist-contrast: job {job_id} is stopping on the cluster; `dist-contrast jobs "
                  f"status {job_id}` tells when it has", file=sys.stderr)
            return 130
        print(f"dist-contrast: job {job_id} {status} (stopped by Ctrl-C); its MLflow run "
              f"{run} is marked KILLED", file=sys.stderr)
        return 130
    return outcome(server, job_id, status)


def outcome(server: JobServer, job_id: str, status: str) -> int:
    """The exit status for a job that ended ``status``; a failure's line from its logs."""
    if status == "SUCCEEDED":
        print(f"dist-contrast: job {job_id} SUCCEEDED")
        return 0
    if status == "STOPPED":
        print(f"dist-contrast: job {job_id} was STOPPED", file=sys.stderr)
        return 130
    if status not in TERMINAL:
        raise RunFailed(f"job {job_id} is still {status} after the log stream closed; "
                        f"`dist-contrast jobs status {job_id}` tells how it ends")
    raise RunFailed(f"job {job_id} {status}: {failure_line(server, job_id)}")


def failure_line(server: JobServer, job_id: str) -> str:
    """Our one-line error from the job's logs, else Ray's message and the last log line."""
    lines = [line.strip() for line in server.logs(job_id).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("dist-contrast: "):
            return line.removeprefix("dist-contrast: ").removeprefix("error: ")
    message = _first_line(RuntimeError(getattr(server.info(job_id), "message", None) or ""))
    message = message.split(", last available logs")[0].rstrip(":") or "no message from Ray"
    last = next((line for line in reversed(lines) if not line.startswith("Running entrypoint")),
                None)
    return f"{message}; last log line: {last[:200]}" if last else message


# ----------------------------------------------------------------------------- jobs commands


def list_jobs(address: str | None = None) -> int:
    server = JobServer(address)
    jobs = sorted(server.jobs(), key=lambda j: j.start_time or 0)
    if not jobs:
        print(f"no jobs on {server.address}")
        return 0
    print(f"{'SUBMISSION ID':<30} {'STATUS':<10} {'STARTED':<19} {'MLFLOW RUN':<32} ENTRYPOINT")
    for job in jobs:
        run = (job.metadata or {}).get(METADATA_RUN, "-")
        print(f"{job.submission_id:<30} {job.status!s:<10} {_time(job.start_time):<19} "
              f"{run:<32} {job.entrypoint[:60]}")
    return 0


def show_status(job_id: str, address: str | None = None) -> int:
    server = JobServer(address)
    info = server.info(job_id)
    print(f"{job_id}: {info.status}")
    run = (info.metadata or {}).get(METADATA_RUN)
    if run:
        print(f"  MLflow run: {run}")
    print(f"  started   : {_time(info.start_time)}")
    if info.end_time:
        print(f"  ended     : {_time(info.end_time)}")
    if info.message:
        print(f"  message   : {_first_line(RuntimeError(info.message))}")
    return 0


def show_logs(job_id: str, follow: bool = False, address: str | None = None) -> int:
    server = JobServer(address)
    if follow:
        server.follow(job_id)
    else:
        print(server.logs(job_id), end="")
    return 0


def stop_job(job_id: str, address: str | None = None) -> int:
    server = JobServer(address)
    if not server.stop(job_id):
        print(f"job {job_id} had already ended: {server.status(job_id)}")
        return 0
    print(f"stopping job {job_id} (SIGTERM: the run stops after its step, with a checkpoint) ...",
          flush=True)
    status = server.wait(job_id, timeout=STOP_TIMEOUT_S)
    print(f"job {job_id}: {status}")
    return 0


def _time(millis: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(millis / 1000)) if millis else "-"
