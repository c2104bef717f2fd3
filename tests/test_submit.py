"""`dist-contrast submit` and `dist-contrast jobs` against a real Ray head (`ray start --head`,
token auth on) and a real MLflow server (basic-auth, artifacts proxied by the server), both on
127.0.0.1: the session's (tests/conftest.py), started once and torn down however the tests end.

The cluster runs on this machine, so it imports the package from the same environment; the
shipped launch/runtime_env.yaml also uploads the package with each job (py_modules), as it
would to a remote cluster.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import Cli, Services
from tests.services import MlflowServer, RayHead

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = str(ROOT / "launch" / "runtime_env.yaml")
TINY = [
    "trainer.num_workers=1", "trainer.batch_size=32", "data.num_samples=600",
    "optimizer.warmup_steps=1", "tracking.log_model=false", "eval.linear_probe=false",
    "eval.max_samples=300",
]
EXPERIMENT = "dist-contrast"
# One pytest-xdist process for the module: the session's Ray head and MLflow server are
# started once (make test runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("services")


@dataclass
class Cluster:
    head: RayHead
    mlflow: MlflowServer
    env: dict[str, str]  # the submitting shell: token, tracking URI, credentials
    home: Path

    def auth(self) -> tuple[str, str]:
        return self.mlflow.username, self.mlflow.password

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 420,
            **env: str | None) -> subprocess.CompletedProcess[str]:
        return Cli().run(*args, cwd=cwd or self.home, store=None, base=self.env, env=env,
                         timeout=timeout)

    def rest(self, endpoint: str, **params: str) -> dict:
        answer = requests.get(f"{self.mlflow.uri}/api/2.0/mlflow/{endpoint}", params=params,
                              auth=self.auth(), timeout=30)
        answer.raise_for_status()
        return dict(answer.json())

    def run(self, name: str) -> dict | None:
        experiment = requests.get(f"{self.mlflow.uri}/api/2.0/mlflow/experiments/get-by-name",
                                  params={"experiment_name": EXPERIMENT}, auth=self.auth(),
                                  timeout=30)
        if experiment.status_code == 404:
            return None
        experiment.raise_for_status()
        found = requests.post(
            f"{self.mlflow.uri}/api/2.0/mlflow/runs/search", auth=self.auth(), timeout=30,
            json={"experiment_ids": [experiment.json()["experiment"]["experiment_id"]],
                  "filter": f"attributes.run_name = '{name}'"},
        )
        found.raise_for_status()
        runs = found.json().get("runs", [])
        return runs[0] if runs else None

    def jobs(self) -> list[dict]:
        """The cluster's jobs, straight from its job server (with the token)."""
        answer = requests.get(f"{self.head.address}/api/jobs/", timeout=60,
                              headers={"Authorization": f"Bearer {self.head.token}"})
        answer.raise_for_status()
        return [job for job in answer.json() if job.get("submission_id")]

    def clis(self, *calls: tuple[tuple[str, ...], dict]) -> list[subprocess.CompletedProcess[str]]:
        """Several CLI calls at once (each spends seconds importing torch and Ray)."""
        with ThreadPoolExecutor(len(calls)) as pool:
            running = [pool.submit(self.cli, *args, **kwargs) for args, kwargs in calls]
            return [call.result() for call in running]


@pytest.fixture(scope="module")
def cluster(services: Services) -> Cluster:
    """The session's Ray head and MLflow server, and a shell on a fresh machine that has the
    head's token and the server's URI and credentials."""
    head, mlflow = services.head, services.mlflow
    # The experiment exists before the first job: its creation is the server's slowest
    # request, and the driver gives a request 10 s by default.
    answer = requests.get(f"{mlflow.uri}/api/2.0/mlflow/experiments/get-by-name", timeout=300,
                          auth=(mlflow.username, mlflow.password),
                          params={"experiment_name": EXPERIMENT})
    if answer.status_code == 404:
        requests.post(f"{mlflow.uri}/api/2.0/mlflow/experiments/create", timeout=300,
                      auth=(mlflow.username, mlflow.password),
                      json={"name": EXPERIMENT}).raise_for_status()
    env = {**services.base, "RAY_AUTH_TOKEN": head.token, "MLFLOW_TRACKING_URI": mlflow.uri,
           "MLFLOW_TRACKING_USERNAME": mlflow.username,
           "MLFLOW_TRACKING_PASSWORD": mlflow.password}
    return Cluster(head, mlflow, env, services.home)


def _job_id(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("submitted job "))
    return line.split()[2]


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


@pytest.mark.cluster
def test_submit_trains_on_the_cluster_and_logs_through_the_mlflow_server(
    cluster: Cluster, tmp_path: Path
) -> None:
    done = cluster.cli(
        "submit", str(ROOT / "configs" / "synthetic.yaml"), *TINY, "trainer.max_steps=4",
        "eval.every_steps=4", "checkpoint.every_steps=4", "experiment.run_name=on-the-cluster",
        f"experiment.output_dir={tmp_path / 'results'}",
        "--address", cluster.head.address, "--runtime-env", RUNTIME_ENV,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job = _job_id(done.stdout)
    assert f"dashboard : {cluster.head.address}" in done.stdout
    assert "finished at step 4" in done.stdout  # the job's logs, followed
    assert f"job {job} SUCCEEDED" in done.stdout
    assert cluster.head.token not in done.stdout + done.stderr  # never printed

    # Read back over HTTP, with the credentials: the run, its params, metrics and artifacts.
    run = cluster.run("on-the-cluster")
    assert run is not None
    info, data = run["info"], run["data"]
    assert info["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["trainer.max_steps"] == "4" and params["trainer.num_workers"] == "1"
    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["dist_contrast.ray_job_id"] == job and tags["mlflow.source.type"] == "JOB"
    history = cluster.rest("metrics/get-history", run_id=info["run_id"], metric_key="train/loss")
    assert sorted(m["step"] for m in history["metrics"]) == [1, 2, 3, 4]
    assert np.isfinite([m["value"] for m in history["metrics"]]).all()
    assert {m["key"] for m in data["metrics"]} >= {"eval/knn_acc", "train/loss"}
    # Artifacts went through the server (mlflow-artifacts:/), into its own store.
    assert info["artifact_uri"].startswith("mlflow-artifacts:/")
    listed = cluster.rest("artifacts/list", run_id=info["run_id"])
    assert {"config.yaml", "summary.json", "plots"} <= {f["path"] for f in listed["files"]}
    config = requests.get(f"{cluster.mlflow.uri}/get-artifact", auth=cluster.auth(), timeout=30,
                          params={"path": "config.yaml", "run_uuid": info["run_id"]})
    assert config.status_code == 200 and "max_steps: 4" in config.text
    stored = list(cluster.mlflow.artifacts.rglob("summary.json"))
    assert len(stored) == 1 and info["run_id"] in str(stored[0])
    # Without the credentials the server answers 401.
    anonymous = requests.get(f"{cluster.mlflow.uri}/api/2.0/mlflow/runs/get", timeout=30,
                             params={"run_id": info["run_id"]})
    assert anonymous.status_code == 401

    listed_jobs, logs = cluster.clis((("jobs", "list", "--address", cluster.head.address), {}),
                                     (("jobs", "logs", job, "--address", cluster.head.address),
                                      {}))
    line = next(line for line in listed_jobs.stdout.splitlines() if line.startswith(job))
    assert "SUCCEEDED" in line and "on-the-cluster" in line
    assert logs.returncode == 0 and "finished at step 4" in logs.stdout


@pytest.mark.cluster
def test_a_bad_config_is_refused_before_anything_is_sent(cluster: Cluster) -> None:
    before = len(cluster.jobs())
    done = cluster.cli("submit", str(ROOT / "configs" / "synthetic.yaml"),
                       "loss.temperature=-1", "--address", cluster.head.address)
    assert done.returncode == 2
    assert _last_error(done.stderr).startswith("dist-contrast: error: ")
    assert "loss.temperature" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "submitted job" not in done.stdout
    assert len(cluster.jobs()) == before


@pytest.mark.cluster
def test_a_wrong_or_missing_ray_token_is_one_line(cluster: Cluster, tmp_path: Path) -> None:
    # The token in ~/.ray/auth_token (where `ray get-auth-token --generate` writes it) is
    # found by itself.
    other_home = tmp_path / "home"
    (other_home / ".ray").mkdir(parents=True)
    (other_home / ".ray" / "auth_token").write_text(cluster.head.token)
    address = ("--address", cluster.head.address)
    wrong, missing, found = cluster.clis(
        (("submit", str(ROOT / "configs" / "synthetic.yaml"), *address),
         {"RAY_AUTH_TOKEN": "not-the-token"}),
        (("jobs", "list", *address), {"RAY_AUTH_TOKEN": None}),
        (("jobs", "list", *address), {"RAY_AUTH_TOKEN": None, "HOME": str(other_home)}),
    )
    assert wrong.returncode == 2
    assert _last_error(wrong.stderr).startswith(
        f"dist-contrast: error: the Ray cluster at {cluster.head.address} rejected the token "
        "from RAY_AUTH_TOKEN"
    )
    assert missing.returncode == 2
    assert "requires an auth token and none was found" in _last_error(missing.stderr)
    assert found.returncode == 0, found.stderr
    for done in (wrong, missing, found):
        assert cluster.head.token not in done.stdout + done.stderr


@pytest.mark.cluster
def test_failures_on_the_cluster_side_end_the_job_failed_with_our_line(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two jobs at once: data that exists here but not in the job's directory on the cluster,
    and MLflow credentials the server refuses (caught by the driver before the run starts)."""
    here = tmp_path / "laptop"
    here.mkdir()
    np.save(here / "features.npy", np.zeros((64, 8), np.float32))
    config = str(ROOT / "configs" / "synthetic.yaml")
    with ThreadPoolExecutor(2) as pool:
        missing_data = pool.submit(
            cluster.cli, "submit", config, *[o for o in TINY if not o.startswith("data.")],
            "data.name=file", "data.path=features.npy",
            "experiment.run_name=missing-data", "--address", cluster.head.address, cwd=here,
        )
        refused = pool.submit(
            cluster.cli, "submit", config, *TINY, "experiment.run_name=refused-login",
            "--address", cluster.head.address, MLFLOW_TRACKING_PASSWORD="wrong-password",
        )
        data_job, login_job = missing_data.result(), refused.result()

    assert data_job.returncode == 1, data_job.stdout[-2000:] + data_job.stderr[-2000:]
    job = _job_id(data_job.stdout)
    # The job's driver resolves the relative path against its working directory (the folder
    # submitted, unpacked by Ray) and says where it looked.
    line = _last_error(data_job.stderr)
    assert line.startswith(f"dist-contrast: error: job {job} FAILED: /"), line
    assert line.endswith("/features.npy: file not found; check data.path "
                         "(relative paths start at the working directory)"), line
    logs, status = cluster.clis((("jobs", "logs", job, "--address", cluster.head.address), {}),
                                (("jobs", "status", job, "--address", cluster.head.address), {}))
    assert "/features.npy: file not found" in logs.stdout
    assert status.stdout.startswith(f"{job}: FAILED")

    assert login_job.returncode == 1, login_job.stdout[-2000:] + login_job.stderr[-2000:]
    line = _last_error(login_job.stderr)
    assert line.startswith(f"dist-contrast: error: job {_job_id(login_job.stdout)} FAILED: ")
    assert line.endswith(
        f"the MLflow server '{cluster.mlflow.uri}' rejected the credentials of "
        f"MLFLOW_TRACKING_USERNAME={cluster.mlflow.username} (401); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account of that server"
    )
    assert "wrong-password" not in login_job.stdout + login_job.stderr
    assert cluster.run("refused-login") is None  # refused before the run started


@pytest.mark.cluster
def test_jobs_stop_ends_the_job_stopped_and_its_mlflow_run_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    follower = Cli().start(
        "submit", ROOT / "configs" / "synthetic.yaml", *TINY, "trainer.max_steps=100000",
        "eval.every_steps=100000", "checkpoint.every_steps=100000",
        "experiment.run_name=stopped-run", f"experiment.output_dir={tmp_path / 'results'}",
        "--address", cluster.head.address, "--runtime-env", RUNTIME_ENV,
        cwd=cluster.home, store=None, base=cluster.env,
    )
    try:
        run = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and follower.poll() is None:
            run = cluster.run("stopped-run")
            if run is not None and cluster.rest(
                "metrics/get-history", run_id=run["info"]["run_id"], metric_key="train/loss"
            ).get("metrics"):
                break  # training: a step is logged
            time.sleep(2)
        assert run is not None and follower.poll() is None, "the job did not start training"
        (job,) = [j["submission_id"] for j in cluster.jobs()
                  if (j.get("metadata") or {}).get("dist_contrast.run_name") == "stopped-run"
                  and j["status"] == "RUNNING"]

        stopped = cluster.cli("jobs", "stop", job, "--address", cluster.head.address)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip().splitlines()[-1] == f"job {job}: STOPPED"
        out, err = follower.communicate(timeout=180)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 130, out[-2000:] + err[-2000:]
    assert f"job {job} was STOPPED" in err
    assert "stopped by SIGTERM" in out  # the driver's own line, in the followed logs
    final = cluster.run("stopped-run")
    assert final is not None and final["info"]["status"] == "KILLED"
