"""Bad config and command-line input, through the real CLI: one line naming the problem and the
fix, exit 2, within seconds, and nothing left behind (the working folder as it was).

Non-finite numbers in any section, a run name that is not one folder name, an empty config
file, a folder given as CONFIG, a deleted MLflow experiment, ``compare --out`` onto a file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.forks import run_cli

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = str(ROOT / "configs" / "synthetic.yaml")
#: A generous bound: each of these is refused before Ray or a worker starts.
SECONDS = 60


def _cli(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
               "DS_ACCELERATOR": "cpu"}
    environ.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    proc = run_cli(args, cwd=cwd, timeout=300, env=environ)
    return proc, time.monotonic() - start


def _tree(folder: Path) -> dict[str, float]:
    """Every path under ``folder`` with its modification time: what "left as it was" means."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _refused(cwd: Path, needle: str, *args: str) -> str:
    """Run the CLI in ``cwd``; check the one-line refusal and that ``cwd`` is unchanged."""
    before = _tree(cwd)
    proc, seconds = _cli(cwd, *args)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert seconds < SECONDS
    assert _tree(cwd) == before, "the refused command left something behind"
    return lines[0]


@pytest.mark.parametrize(("override", "needle"), [
    ("optimizer.lr=.inf", "optimizer.lr must be a finite number, not inf"),
    ("optimizer.lr=-.inf", "optimizer.lr must be a finite number, not -inf"),
    ("optimizer.betas=[.nan,0.9]", "optimizer.betas.0 must be a finite number, not nan"),
    ("data.noise_scale=.inf", "data.noise_scale must be a finite number"),
    ("negatives.bank.proximal=.inf", "negatives.bank.proximal"),
    ("eval.knn_temperature=1e400", "eval.knn_temperature must be a finite number, not '1e400'"),
])
def test_a_non_finite_number_is_refused_in_every_section(
    tmp_path: Path, override: str, needle: str
) -> None:
    line = _refused(tmp_path, needle, "train", SYNTHETIC, override)
    assert "finite number" in line


def test_a_non_finite_loss_option_names_the_option(tmp_path: Path) -> None:
    _refused(tmp_path, "loss.params.margin must be a finite number, not inf",
             "train", SYNTHETIC, "loss.name=triplet", "loss.params.margin=.inf")


@pytest.mark.parametrize("name", ["../escaped", "a\\b", "..", "''"])
def test_a_run_name_is_one_folder_name(tmp_path: Path, name: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    line = _refused(work, "experiment.run_name=", "train", SYNTHETIC,
                    f"experiment.run_name={name}", "experiment.output_dir=results")
    assert "must be a single folder name" in line and "experiment.output_dir" in line
    assert list(tmp_path.iterdir()) == [work]  # nothing beside the working folder either


def test_an_experiment_name_that_would_escape_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, "experiment.name='../up' must be a single folder name",
             "train", SYNTHETIC, "experiment.name=../up")


@pytest.mark.parametrize(("command", "text"), [
    ("train", ""), ("train", "# only a comment\n"), ("config", "\n\n"),
])
def test_an_empty_config_file_is_refused(tmp_path: Path, command: str, text: str) -> None:
    (tmp_path / "empty.yaml").write_text(text)
    line = _refused(tmp_path, "config file 'empty.yaml' is empty", command, "empty.yaml")
    assert "configs/synthetic.yaml" in line


@pytest.mark.parametrize("command", [
    ["train"], ["config"], ["sweep", "--grid", "loss.temperature=0.1,0.2"],
    ["submit", "--address", "http://127.0.0.1:9"],
])
def test_a_folder_given_as_config_is_named_a_folder(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("trainer: {max_steps: 2}\n")
    line = _refused(tmp_path, "config file 'configs' is a directory; name a YAML file",
                    command[0], "configs", *command[1:])
    assert "configs/mine.yaml" in line
    assert "not found" not in line


def _store_with_deleted_experiment(folder: Path, name: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment_id = str(client.create_experiment(name))
    client.delete_experiment(experiment_id)
    return experiment_id


def test_a_deleted_experiment_says_so_and_how_to_restore_it(tmp_path: Path) -> None:
    experiment_id = _store_with_deleted_experiment(tmp_path, "gone")
    # The sweep checks the experiment before Ray starts (train does it while Ray starts).
    line = _refused(tmp_path, f"MLflow experiment 'gone' (id {experiment_id})", "sweep",
                    SYNTHETIC, "--grid", "loss.temperature=0.1,0.2", "tracking.experiment=gone",
                    "experiment.output_dir=results")
    assert "was deleted" in line and "cannot reach" not in line
    assert f"mlflow experiments restore --experiment-id {experiment_id}" in line
    assert "tracking.experiment" in line and "mlflow gc" in line
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.search_runs([experiment_id]) == []  # no run was opened in it


@pytest.mark.ray
def test_training_into_a_deleted_experiment_says_so(tmp_path: Path) -> None:
    """``train`` checks the experiment while Ray starts: the same line, Ray stopped again."""
    _store_with_deleted_experiment(tmp_path, "gone")
    proc, _ = _cli(tmp_path, "train", SYNTHETIC, "tracking.experiment=gone",
                   "trainer.num_workers=1", "trainer.max_steps=2", "experiment.run_name=r",
                   "experiment.output_dir=results")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "MLflow experiment 'gone'" in proc.stderr and "was deleted" in proc.stderr
    assert not (tmp_path / "results" / "r").exists()


@pytest.mark.parametrize("layout", ["file", "under_a_file"])
def test_compare_out_onto_a_file_is_one_line(tmp_path: Path, layout: str) -> None:
    (tmp_path / "taken").write_text("someone's notes\n")
    out = "taken" if layout == "file" else "taken/comparison"
    _refused(tmp_path, f"--out {out}", "compare", "some-experiment", "--out", out)
    assert (tmp_path / "taken").read_text() == "someone's notes\n"
