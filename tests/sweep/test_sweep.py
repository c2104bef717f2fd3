"""Real sweeps through the CLI: Ray tasks each running a TorchTrainer with DeepSpeed workers,
MLflow parent and child runs in a temporary sqlite store, then ``compare`` on the result."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import Cli
from tests.faults import nan_plugin

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
# Tiny children: 1 worker, 64 rows a step, one eval and one checkpoint at the end.
TINY = [
    f"trainer.max_steps={STEPS}", "trainer.num_workers=1", "trainer.batch_size=64",
    "data.num_samples=600", "trainer.log_every=1", f"eval.every_steps={STEPS}",
    "eval.max_samples=300", f"checkpoint.every_steps={STEPS}", "optimizer.warmup_steps=1",
    "tracking.log_model=false", "tracking.experiment=sweeps",
]

pytestmark = pytest.mark.ray
CLI = Cli()


def _command(tmp: Path, *args: str) -> list[str]:
    return ["sweep", str(ROOT / "configs" / "synthetic.yaml"), *TINY,
            f"experiment.output_dir={tmp / 'results'}", *args]


def _sweep(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return CLI.run(*_command(tmp, *args), cwd=tmp, env=env)


def _client(tmp: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")


def _runs(tmp: Path) -> list[mlflow.entities.Run]:
    client = _client(tmp)
    experiment = client.get_experiment_by_name("sweeps")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id]))


def _family(tmp: Path, name: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    runs = _runs(tmp)
    (parent,) = [r for r in runs if r.data.tags.get("dist_contrast.sweep.name") == name]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


# Eight TorchTrainer children: 547 s in one fresh-clone rehearsal, past pytest's 900 s on a
# busier machine in the next; the whole-suite limit of CI is the bound that matters.
@pytest.mark.timeout(1800)
def test_a_sweep_runs_its_grid_goes_on_past_a_failure_resumes_and_compares(
    tmp_path: Path,
) -> None:
    # Two configs: the τ grid × 2 seeds of the synthetic config, and a τ-free loss that fails at
    # run time. Steps 2 and 3 give a NaN loss in every child; the synthetic children allow 3
    # bad steps in a row and skip them, the other config's grid allows 1, so its children fail.
    raw = yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text())
    raw["loss"] = {"name": "simple"}
    raw["sweep"] = {"grid": {"trainer.max_bad_steps": [1]}}
    faulty = tmp_path / "faulty.yaml"
    faulty.write_text(yaml.safe_dump(raw))
    args = [str(faulty), "--grid", "loss.temperature=0.1,0.5"]
    grid = ["--seeds", "2", "--name", "tau", "trainer.max_bad_steps=3"]
    # The NaN comes from the objectives themselves, re-registered in every process.
    fault = nan_plugin(tmp_path / "nan", {"info_nce": [2, 3], "simple": [2, 3]})
    done = _sweep(tmp_path, *args, *grid, **fault)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 of 6 trials to run" in done.stdout and "best eval/knn_acc" in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert "2 of 6 children failed" in last and "tau_faulty_" in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    parent, children = _family(tmp_path, "tau")
    assert parent.info.status == "FAILED"
    assert "tau_faulty_" in parent.data.tags["dist_contrast.error"]
    assert parent.data.tags["dist_contrast.sweep"] == "true"
    assert parent.data.params["sweep.seeds"] == "2"
    assert "loss.temperature: [0.1, 0.5]" in parent.data.params["sweep.grid"]
    assert parent.data.params["trainer.max_steps"] == str(STEPS)  # the base config as params
    failed = [c for c in children if c.info.status == "FAILED"]
    good = [c for c in children if c.info.status == "FINISHED"]
    assert len(failed) == 2 and len(good) == 4
    for child in failed:
        assert child.data.params["trainer.max_bad_steps"] == "1"
        assert "non-finite" in child.data.tags["dist_contrast.error"]
    points = {(c.data.params["loss.temperature"], c.data.params["experiment.seed"])
              for c in good}
    assert points == {(tau, seed) for tau in ("0.1", "0.5") for seed in ("0", "1")}
    client = _client(tmp_path)
    for child in good:
        assert child.data.tags["dist_contrast.grid.loss.temperature"] == child.data.params[
            "loss.temperature"]
        assert child.data.tags["dist_contrast.grid.seed"] == child.data.params["experiment.seed"]
        assert {"eval/knn_acc", "eval/local_separation", "eval/collapsed", "train/loss",
                "train/skipped_steps", "diag/penalty_entropy"} <= set(child.data.metrics)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert steps == list(range(1, STEPS + 1))
    plots = {a.path for a in client.list_artifacts(good[0].info.run_id, "plots")}
    assert {"plots/relative_penalty.png", "plots/similarities.png"} <= plots

    # The same command again: the finished children are kept, the failed ones run again.
    again = _sweep(tmp_path, *args, *grid, **fault)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "2 of 6 trials to run" in again.stdout
    started = [line for line in again.stdout.splitlines() if line.strip().startswith("start")]
    assert len(started) == 2 and all("faulty" in line for line in started)
    parent_again, children_again = _family(tmp_path, "tau")
    assert parent_again.info.run_id == parent.info.run_id
    assert {c.info.run_id for c in good} <= {c.info.run_id for c in children_again}

    # compare on the parent: the FINISHED children only; table, figures, one HTML file with
    # the images inside.
    # With a claim over the two points: its difference ± SE, Welch's t and a verdict.
    claims = tmp_path / "claims.yaml"
    claims.write_text(yaml.safe_dump({"claims": [{
        "name": "small-tau", "says": "τ = 0.1 beats τ = 0.5.", "metric": "eval/knn_acc",
        "higher": {"loss.temperature": 0.1}, "lower": {"loss.temperature": 0.5}}]}))
    out = tmp_path / "report"
    compared = CLI.run("compare", parent.info.run_id, "--out", out, "--claims", claims,
                       cwd=tmp_path, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "2 grid points" in compared.stdout
    (row,) = [line for line in (out / "claims.md").read_text().splitlines()
              if line.startswith("| small-tau")]
    assert " ± " in row and re.search(r"holds|reversed|not resolved at n = 2", row), row
    assert "small-tau" in compared.stdout
    table = (out / "comparison.md").read_text()
    for tau in ("0.1", "0.5"):
        knn = [c.data.metrics["eval/knn_acc"] for c in good
               if c.data.params["loss.temperature"] == tau]
        mean = sum(knn) / 2
        std = (sum((v - mean) ** 2 for v in knn) / 1) ** 0.5
        assert f"{mean:.4f} ± {std:.4f} (n=2)" in table
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = (out / "report.html").read_text()
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    # (compare by experiment name, which leaves the parent out: tests/compare/test_compare.py)


def test_an_invalid_grid_value_starts_nothing(tmp_path: Path) -> None:
    done = _sweep(tmp_path, "--grid", "loss.temperature=0.2,-1", "--name", "bad")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "grid point loss.temperature=-1" in line and "nothing was started" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_ctrl_c_stops_every_running_child_and_leaves_nothing_running(tmp_path: Path) -> None:
    args = ["--grid", "loss.temperature=0.1,0.5", "--name", "stopped", "trainer.max_steps=4000"]
    driver = CLI.start(*_command(tmp_path, *args), cwd=tmp_path)
    lines: list[str] = []
    assert driver.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(driver.stdout.readline, "")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    # Both children started and logging steps: they are training.
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            pytest.fail(f"the sweep ended early: {''.join(lines)}{driver.communicate()[1]}")
        if sum("start " in line for line in lines) == 2:
            _, children = _family(tmp_path, "stopped")
            if len(children) == 2 and all(_steps(tmp_path, c) >= 3 for c in children):
                break
        time.sleep(1)
    driver.send_signal(signal.SIGINT)
    driver.wait(timeout=300)
    assert driver.stderr is not None
    err = driver.stderr.read()
    assert driver.returncode == 130, err[-3000:]
    assert "stopped by SIGINT" in err.strip().splitlines()[-1] and "Traceback" not in err
    parent, children = _family(tmp_path, "stopped")
    assert parent.info.status == "KILLED"
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]


def _steps(tmp: Path, run: mlflow.entities.Run) -> int:
    history = _client(tmp).get_metric_history(run.info.run_id, "train/loss")
    return max((m.step for m in history), default=0)
