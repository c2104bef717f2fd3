"""Runs that do not go straight through, with real processes: a worker SIGKILLed mid-run, Ctrl-C
and SIGTERM on the driver.

Every run is the real CLI (2 Ray workers, DeepSpeed on CPU, MLflow in SQLite). A resumed or
restarted run must log each step exactly once and give the same losses as an uninterrupted run.
(Non-finite steps and a resume with a longer schedule need no Ray:
tests/train/test_local_runs.py.)
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import Cli, metric_history, store_runs

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60
# Small and quick: 2 workers × 128 rows a step, a checkpoint every 10 steps.
BASE = [
    "configs/synthetic.yaml", f"trainer.max_steps={STEPS}", "trainer.batch_size=128",
    "data.num_samples=6000", "trainer.log_every=5", "eval.every_steps=1000",
    "checkpoint.every_steps=10", "optimizer.warmup_steps=5",
]

# One pytest-xdist process for the module: its reference run is trained once (make test runs
# --dist loadgroup), and its Ray runs do not crowd the other processes' (a rehearsal with only
# the two tests that use the reference grouped took 41 min of pytest against 29 with all four).
pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("reliability")]
CLI = Cli()


def _command(tmp: Path, run_name: str, *overrides: str) -> list[str]:
    return ["train", str(ROOT / BASE[0]), *BASE[1:], f"experiment.output_dir={tmp / 'results'}",
            f"experiment.run_name={run_name}", *overrides]


def _train(tmp: Path, store: Path, run_name: str, *overrides: str,
           **env: str) -> subprocess.CompletedProcess[str]:
    return CLI.run(*_command(tmp, run_name, *overrides), cwd=tmp, store=store, env=env)


def _start(tmp: Path, store: Path, run_name: str, *overrides: str) -> subprocess.Popen[str]:
    return CLI.start(*_command(tmp, run_name, *overrides), cwd=tmp, store=store)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str],
              timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended early ({process.returncode}): {out[-2000:]}{err[-2000:]}")
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def _complete(tmp: Path, run_name: str, step: int) -> Callable[[], bool]:
    marker = tmp / "results" / run_name / f"checkpoint_{step:08d}" / "meta.json"
    return marker.is_file


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_a_worker(driver: subprocess.Popen[str]) -> None:
    """SIGKILL one of the driver's Ray Train worker processes."""
    workers = [p for p in _descendants(driver.pid) if "RayTrainWorker" in " ".join(p.cmdline())]
    assert workers, "no Ray Train worker found"
    workers[-1].send_signal(signal.SIGKILL)


def _ray_processes_of(pid: int) -> list[int]:
    """Ray processes started by the driver ``pid`` that are still alive (the session's name
    ends with the driver's pid; workers are the raylet's children)."""
    alive = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if f"_{pid}/" in cmdline or f"_{pid} " in cmdline or cmdline.endswith(f"_{pid}"):
            alive.append(process.info["pid"])
    return alive


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, float]]]:
    """An uninterrupted run: its folder and its loss at every step."""
    tmp = tmp_path_factory.mktemp("reference")
    store = tmp / "mlflow.db"
    proc = _train(tmp, store, "ref")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = store_runs(store)
    history = metric_history(store, run.info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1))
    return tmp, history


def test_a_sigkilled_worker_restarts_from_the_newest_checkpoint_in_the_same_run(
    tmp_path: Path, reference: tuple[Path, list[tuple[int, float]]]
) -> None:
    store = tmp_path / "mlflow.db"
    driver = _start(tmp_path, store, "killed", "trainer.max_failures=1")
    _wait_for(_complete(tmp_path, "killed", 10), driver)
    _kill_a_worker(driver)
    out, err = driver.communicate(timeout=900)
    assert driver.returncode == 0, out[-3000:] + err[-3000:]

    (run,) = store_runs(store)  # one MLflow run, not a new one per attempt
    assert run.info.status == "FINISHED"
    history = metric_history(store, run.info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1))  # each step once
    assert history == reference[1]  # and exactly the uninterrupted run's losses
    kept = sorted(p.name for p in (tmp_path / "results" / "killed").glob("checkpoint_*"))
    assert kept == ["checkpoint_00000050", "checkpoint_00000060"]  # num_to_keep on disk


def test_without_max_failures_a_killed_worker_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    driver = _start(tmp_path, store, "fails")
    _wait_for(_complete(tmp_path, "fails", 10), driver)
    _kill_a_worker(driver)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("dist-contrast: error: worker rank"), err[-3000:]
    assert "trainer.max_failures" in last and "Traceback" not in err
    assert (tmp_path / "results" / "fails" / "error.txt").is_file()
    (run,) = store_runs(store)
    assert run.info.status == "FAILED"


def test_ctrl_c_saves_a_checkpoint_and_a_rerun_continues_without_a_duplicate_step(
    tmp_path: Path, reference: tuple[Path, list[tuple[int, float]]]
) -> None:
    store = tmp_path / "mlflow.db"
    driver = _start(tmp_path, store, "stopped")
    _wait_for(_complete(tmp_path, "stopped", 10), driver)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGINT" in last and "experiment.run_name=stopped" in last, err[-2000:]
    assert "Traceback" not in err
    (run,) = store_runs(store)
    assert run.info.status == "KILLED"
    deadline = time.monotonic() + 30
    while _ray_processes_of(driver.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes_of(driver.pid), "Ray processes outlived the driver"
    stopped_at = max(int(p.name.split("_")[1]) for p in
                     (tmp_path / "results" / "stopped").glob("checkpoint_*"))
    assert 10 <= stopped_at < STEPS

    again = _train(tmp_path, store, "stopped")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (run,) = store_runs(store)
    assert run.info.status == "FINISHED"
    history = metric_history(store, run.info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1))
    assert history == reference[1]


def test_sigterm_stops_like_ctrl_c_with_exit_143(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    driver = _start(tmp_path, store, "terminated")
    _wait_for(_complete(tmp_path, "terminated", 10), driver)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    (run,) = store_runs(store)
    assert run.info.status == "KILLED"
