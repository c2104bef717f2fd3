"""With RAY_ADDRESS set, the same command runs on that cluster (a real `ray start --head`).

Runs with a fresh HOME, as on a new machine: `ray start` writes the cluster's auth token to
~/.ray/auth_token and the CLI must find it and authenticate by itself. (So this head is its own,
not the session's token-in-the-environment head of tests/conftest.py.)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.conftest import Cli
from tests.services import MARKER, marked

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
CLI = Cli()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.cluster
def test_train_runs_on_an_existing_cluster(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # Every process of this cluster inherits the marker: teardown ends exactly those (never
    # `ray stop`, which would end every Ray process on the machine).
    marker = f"test-cluster-{os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "HOME": str(home), "DS_ACCELERATOR": "cpu", MARKER: marker}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    # Share any JIT-compiled DeepSpeed op with the real HOME so it is not rebuilt for this test.
    extensions = Path.home() / ".cache" / "torch_extensions"
    env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    port = _free_port()
    start = subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        on_cluster = {"RAY_ADDRESS": f"127.0.0.1:{port}"}
        proc = CLI.run(
            "train", ROOT / "configs/synthetic.yaml", "trainer.max_steps=6",
            "trainer.batch_size=32", "eval.every_steps=6", "checkpoint.every_steps=6",
            "optimizer.warmup_steps=2", "data.num_samples=1000",
            f"experiment.output_dir={tmp_path / 'results'}", "experiment.run_name=on-cluster",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            cwd=tmp_path, store=None, base=env, env=on_cluster, timeout=600,
        )
        # A sweep joins the same cluster: two 1-worker trials at once on its 2 CPUs.
        sweep = CLI.run(
            "sweep", ROOT / "configs/synthetic.yaml", "--grid", "loss.temperature=0.1,0.5",
            "--name", "on-cluster-sweep", "trainer.num_workers=1", "trainer.max_steps=4",
            "trainer.batch_size=32", "eval.every_steps=4", "checkpoint.every_steps=4",
            "optimizer.warmup_steps=1", "data.num_samples=1000", "tracking.log_model=false",
            f"experiment.output_dir={tmp_path / 'results'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            cwd=tmp_path, store=None, base=env, env=on_cluster, timeout=600,
        )
    finally:
        for _ in range(3):
            found = marked(marker)
            for process in found:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            psutil.wait_procs(found, timeout=10)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "finished at step 6" in proc.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("dist-contrast")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    (run,) = [r for r in runs if r.info.run_name == "on-cluster"]
    assert run.info.status == "FINISHED"
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    assert "2 of 2 trials to run" in sweep.stdout and "2 at a time" in sweep.stdout
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}


def test_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    proc = CLI.run("train", ROOT / "configs/synthetic.yaml", cwd=tmp_path, timeout=300,
                   store=tmp_path / "m.db", env={"RAY_ADDRESS": f"127.0.0.1:{_free_port()}"})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dist-contrast: error: cannot reach the Ray cluster")
    assert "Traceback" not in proc.stderr
