"""Bad input the driver meets, through the real CLI: a relative data path works from the
folder it is given in, an unusable output folder is one line before anything starts, and a user
mistake found in a worker reaches the driver as its own line with exit 2."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.forks import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _train(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
           "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    proc = run_cli(["train", *args], cwd=cwd, timeout=600, env=env)
    return proc, time.monotonic() - start


def _file_config(folder: Path, **data: Any) -> Path:
    rng = np.random.default_rng(0)
    np.save(folder / "good.npy", rng.normal(size=(300, 8)).astype(np.float32))
    np.save(folder / "labels.npy", np.arange(300) % 3)
    lines = ["data:", "  name: file", *(f"  {k}: {v}" for k, v in data.items()),
             "trainer: {num_workers: 1, batch_size: 32, max_steps: 2}",
             "eval: {every_steps: 2, linear_probe: false, max_samples: 100}",
             "checkpoint: {every_steps: 2}", "experiment: {run_name: rel}"]
    config = folder / "cfg.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.mark.ray
def test_relative_data_paths_work_from_the_folder_they_are_given_in(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _file_config(work, path="good.npy", labels_path="labels.npy")
    proc, _ = _train(work, "cfg.yaml")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (work / "results" / "rel").is_dir()  # output_dir relative to the same folder


@pytest.mark.parametrize("output_dir", ["a_file", "a_file/below", "/proc/nope"])
def test_an_unusable_output_dir_is_one_line_before_anything_starts(
    tmp_path: Path, output_dir: str
) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    config = _file_config(tmp_path, path="good.npy")
    proc, seconds = _train(tmp_path, str(config), f"experiment.output_dir={output_dir}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error: "), proc.stderr
    assert "experiment.output_dir" in lines[0]
    assert seconds < 30
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run, FAILED or otherwise
    assert sorted(os.listdir(tmp_path)) == ["a_file", "cfg.yaml", "good.npy", "labels.npy"]


def _raises_a_data_error(loop_config: dict[str, Any]) -> None:
    """A worker that finds a user mistake in its data (as a dataset's reader would)."""
    from dist_contrast.data import DataError

    raise DataError("/data/shard-3.npy", "holds 7 columns, the run's model expects 8",
                    "re-export the shard with 8 columns")


@pytest.mark.ray
def test_a_user_mistake_found_in_a_worker_is_the_drivers_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dist_contrast.config import load_config
    from dist_contrast.driver.run import run_training
    from dist_contrast.errors import RunFailed, UserError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import this module's loop
    cfg = load_config(_file_config(tmp_path, path="good.npy"), [])
    with pytest.raises(UserError) as caught:
        run_training(cfg, train_loop=_raises_a_data_error)
    error = caught.value
    assert not isinstance(error, RunFailed) and error.exit_code == 2
    assert "shard-3.npy" in str(error) and "re-export the shard" in str(error)
    assert "health check" not in str(error)


def test_a_supervised_loss_on_data_without_labels_is_one_line(tmp_path: Path) -> None:
    config = _file_config(tmp_path, path="good.npy")  # no labels_path
    proc, seconds = _train(tmp_path, str(config), "loss.name=supcon")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "loss.name=supcon" in lines[0] and "labels" in lines[0], lines
    assert seconds < 30
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def _never_starts(loop_config: dict[str, Any]) -> None:
    """A worker stuck before it reports anything (a hung op build, a rendezvous that never
    completes)."""
    time.sleep(600)


@pytest.mark.ray
def test_workers_that_never_start_end_the_run_with_one_line_and_no_ray_process_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    from dist_contrast.config import load_config
    from dist_contrast.driver.run import run_training
    from dist_contrast.errors import UserError
    from tests.conftest import store_runs

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import this module's loop
    cfg = load_config(_file_config(tmp_path, path="good.npy"), ["trainer.start_timeout_s=3"])
    # What ran before the run is not the run's: this process's fork server (tests/forks.py),
    # started after an earlier test imported Ray, has Ray's folder in its command line.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        run_training(cfg, train_loop=_never_starts)
    assert time.monotonic() - started < 300
    line = str(caught.value)
    assert caught.value.exit_code == 1 and "\n" not in line
    assert "starting 1 worker (Ray Train)" in line and "trainer.start_timeout_s=3" in line
    (run,) = store_runs(tmp_path / "mlflow.db")
    assert run.info.status == "FAILED"
    ray_processes = [p for p in psutil.Process().children(recursive=True)
                     if p.pid not in before and "ray" in " ".join(p.cmdline()).lower()]
    assert not [p for p in ray_processes if p.is_running() and p.status() != "zombie"]
