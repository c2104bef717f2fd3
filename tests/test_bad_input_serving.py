"""Bad input to ``embed``, ``evaluate`` and a resumed ``train``, through the real CLI: one line
naming the problem and the fix, exit 2, within seconds, and nothing left behind.

The checkpoints are real (the fp32 run of tests/serving/checkpoints.py: two gloo ranks, no Ray);
a refused ``train`` stops on the driver, before Ray or MLflow start.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from dist_contrast.serving import load_encoder
from dist_contrast.serving.evaluate import evaluation_config
from dist_contrast.train import storage
from dist_contrast.train.state import DEEPSPEED_TAG, MODEL_STATES, state_file
from tests.forks import cli_command, run_cli
from tests.serving.checkpoints import (
    Checkpoints,
    LoggedRun,
    log_fp32_run,
    make_checkpoints,
    run_overrides,
)

# The session's trained checkpoints (or run) are made once per pytest-xdist process: one process
# for the module (make check runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("serving_checkpoints")

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 60  # generous: a refusal comes in seconds, the bound only catches minutes of retries


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return make_checkpoints(tmp_path_factory.mktemp("trained"), ("fp32",))


@pytest.fixture(scope="session")
def logged(trained: Checkpoints, tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    return log_fp32_run(trained, tmp_path_factory.mktemp("mlflow"))


def _cli(cwd: Path, *args: str, umask: int = -1, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DS_ACCELERATOR": "cpu",
               "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **env}
    environ.pop("RAY_ADDRESS", None)
    return run_cli(args, cwd=cwd, timeout=300, env=environ, umask=umask)


def _refused(cwd: Path, *args: str, **env: str) -> str:
    """Run the CLI; expect exit 2 and one line within :data:`SECONDS`; return the line."""
    start = time.monotonic()
    proc = _cli(cwd, *args, **env)
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error:"), proc.stderr
    assert proc.stdout == ""
    assert seconds < SECONDS
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _copy_run(trained: Checkpoints, tmp_path: Path) -> tuple[Path, Path]:
    """The fp32 run folder copied: (its complete checkpoint, a second one without meta.json)."""
    complete = Path(trained.path("fp32"))
    run = tmp_path / "run"
    shutil.copytree(complete, run / complete.name)
    unmarked = run / "checkpoint_00000009"
    shutil.copytree(complete, unmarked)
    (unmarked / storage.MARKER).unlink()
    return run / complete.name, unmarked


# ----------------------------------------------------------------------------- meta.json


def test_embed_refuses_a_checkpoint_without_meta_json_and_says_how_to_use_it(
    trained: Checkpoints, tmp_path: Path
) -> None:
    complete, unmarked = _copy_run(trained, tmp_path)
    np.save(tmp_path / "in.npy", trained.features)
    before = _files(tmp_path)
    line = _refused(tmp_path, "embed", str(unmarked), "in.npy", "-o", "out.npy")
    assert f"checkpoint '{unmarked}' has no meta.json" in line
    assert f"e.g. {complete}" in line and "resume" not in line
    assert _files(tmp_path) == before
    # The way the line gives to use it anyway works.
    command = line.split("copy the run's marker into it: ", 1)[1]
    assert shlex.split(command) == ["cp", str(complete / "meta.json"),
                                    str(unmarked / "meta.json")]
    subprocess.run(shlex.split(command), check=True)
    proc = _cli(tmp_path, "embed", str(unmarked), "in.npy", "-o", "out.npy")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "out.npy").shape == (len(trained.features), 8)


def test_evaluate_refuses_a_checkpoint_without_meta_json(
    trained: Checkpoints, tmp_path: Path
) -> None:
    _, unmarked = _copy_run(trained, tmp_path)
    shutil.rmtree(unmarked.parent / "checkpoint_00000003")  # no complete one beside it
    line = _refused(tmp_path, "evaluate", str(unmarked))
    assert "has no meta.json" in line and "runs:/RUN_ID/encoder" in line
    assert not (tmp_path / "mlflow.db").exists()


def test_train_refuses_to_resume_a_checkpoint_without_meta_json_until_marked(
    trained: Checkpoints, tmp_path: Path
) -> None:
    _, unmarked = _copy_run(trained, tmp_path)
    train = ["train", str(ROOT / "configs/synthetic.yaml"), *run_overrides(trained.root, "fp32"),
             f"trainer.resume_from={unmarked}", f"experiment.output_dir={tmp_path / 'out'}"]
    line = _refused(tmp_path, *train)
    assert f"checkpoint '{unmarked}' has no meta.json" in line
    assert f"e.g. {unmarked.parent / 'checkpoint_00000003'}" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
    # Marked as the line says, the folder is taken: the world size is now meta.json's.
    subprocess.run(line.split("mark it complete: ", 1)[1], shell=True, check=True)
    assert json.loads((unmarked / "meta.json").read_text()) == {"world_size": 2}
    line = _refused(tmp_path, *train, "trainer.num_workers=1")
    assert "was written by 2 workers (meta.json)" in line and "trainer.num_workers=2" in line


def test_a_missing_last_rank_is_named_not_taken_for_a_smaller_world(
    trained: Checkpoints, tmp_path: Path
) -> None:
    complete, _ = _copy_run(trained, tmp_path)
    state_file(complete, 1).unlink()
    train = ["train", str(ROOT / "configs/synthetic.yaml"), *run_overrides(trained.root, "fp32"),
             f"trainer.resume_from={complete}", f"experiment.output_dir={tmp_path / 'out'}"]
    for workers in ("trainer.num_workers=2", "trainer.num_workers=1"):
        line = _refused(tmp_path, *train, workers)
        assert "trainer_state_rank1.pt is missing" in line and "the 2 workers'" in line
        assert "written by 1 worker" not in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


# ----------------------------------------------------------------------------- wording


def test_mine_refuses_an_encoder_of_rows_of_numbers(trained: Checkpoints, tmp_path: Path
                                                    ) -> None:
    from tests.data.helpers import write_text_pairs

    pairs = write_text_pairs(tmp_path / "pairs.jsonl", 10)
    line = _refused(tmp_path, "mine", trained.path("fp32"), "--queries", str(pairs), "-o",
                    "out.jsonl")
    assert "an encoder of rows of numbers, which cannot score texts" in line
    assert not (tmp_path / "out.jsonl").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_embeds_checkpoint_errors_speak_of_embed_not_of_resuming(
    trained: Checkpoints, tmp_path: Path
) -> None:
    complete, _ = _copy_run(trained, tmp_path)
    states = complete / DEEPSPEED_TAG / MODEL_STATES
    states.write_bytes(states.read_bytes()[:2000])
    np.save(tmp_path / "in.npy", trained.features)
    line = _refused(tmp_path, "embed", str(complete), "in.npy", "-o", "out.npy")
    assert "truncated or corrupted" in line and "another checkpoint of the run" in line
    assert "resume" not in line and "fresh run" not in line


def test_ctrl_c_in_embed_says_so_and_leaves_nothing(trained: Checkpoints, tmp_path: Path) -> None:
    # ~1M rows one at a time: tens of seconds, so the interrupt lands mid-way even on a busy
    # machine (100k rows took a second or two with one OpenMP thread, and ended first).
    rows = np.tile(trained.features, (4000, 1))
    np.save(tmp_path / "in.npy", rows)
    environ = {**os.environ, "DS_ACCELERATOR": "cpu", "MLFLOW_TRACKING_URI": ""}
    proc = subprocess.Popen(
        cli_command(["embed", trained.path("fp32"), "in.npy", "-o", "out.npy", "--batch-size",
                     "1"]),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ,
        # Ctrl-C as a terminal delivers it: a test process that ran Ray or DeepSpeed before
        # may ignore SIGINT, and a child would inherit that and never see the interrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.npy.*.partial")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert list(tmp_path.glob(".out.npy.*.partial")), "embed never started writing"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # 130, or killed by SIGINT (a shell shows 130 too): CPython 3.11 exits by the signal when
    # the interrupt landed in an exec() of a string (dataclasses, while importing rich), even
    # though the CLI caught it, printed its line and returned 130.
    assert proc.returncode in (130, -signal.SIGINT), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["dist-contrast: embed interrupted; nothing written (OUTPUT is as it was)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


# ----------------------------------------------------------------------------- MLflow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_embed_with_a_tracking_server_that_is_down(tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.zeros((4, 12), dtype=np.float32))
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    line = _refused(tmp_path, "embed", "0" * 32, "in.npy", "-o", "out.npy",
                    MLFLOW_TRACKING_URI=uri)
    assert time.monotonic() - start < 20
    assert f"cannot reach the MLflow tracking server at {uri}" in line
    assert "start it" in line and "MLFLOW_TRACKING_URI" in line and "no MLflow run" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_evaluate_a_run_on_a_file_after_synthetic_training(
    trained: Checkpoints, tmp_path: Path
) -> None:
    """The README's command for a run trained with synthetic-only keys (data.num_samples):
    the trained dataset's keys are dropped when the dataset changes."""
    complete, _ = _copy_run(trained, tmp_path)
    meta = json.loads((complete / "meta.json").read_text())
    meta["config"]["data"] = {**meta["config"]["data"], "name": "synthetic", "path": None,
                              "labels_path": None, "num_samples": 600, "dim": 12,
                              "signal_dim": 4}
    (complete / "meta.json").write_text(json.dumps(meta))
    np.save(tmp_path / "new.npy", trained.features[:100])
    np.save(tmp_path / "labels.npy", np.arange(100) % 5)
    proc = _cli(tmp_path, "evaluate", str(complete), "data.name=file", "data.path=new.npy",
                "data.labels_path=labels.npy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval/knn_acc" in proc.stdout
    # The same dataset keeps its keys: the trained synthetic settings still apply.
    loaded = load_encoder(str(complete))
    assert evaluation_config(loaded, ["data.num_test=50"]).data.num_samples == 600
    cfg = evaluation_config(loaded, ["data.name=file", f"data.path={tmp_path / 'new.npy'}"])
    assert cfg.data.name == "file" and "num_samples" not in cfg.data.model_fields_set


def test_evaluate_from_mlflow_prints_no_progress_bars(logged: LoggedRun, tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.zeros((50, 5), dtype=np.float32))
    line = _refused(tmp_path, "evaluate", logged.run_id, "data.path=wide.npy",
                    "data.labels_path=null", "--tracking-uri", logged.tracking_uri)
    assert "wide.npy" in line and "12" in line
    # The bars are MLflow's; a user who asks for them gets them.
    shown = _cli(tmp_path, "evaluate", logged.run_id, "data.path=wide.npy",
                 "data.labels_path=null", "--tracking-uri", logged.tracking_uri,
                 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="true")
    assert shown.returncode == 2 and "Downloading artifacts" in shown.stderr
    runs = mlflow.MlflowClient(logged.tracking_uri).search_runs(
        [mlflow.MlflowClient(logged.tracking_uri).get_experiment_by_name("serving")
         .experiment_id])
    assert len(runs) == 1  # nothing logged for the refused evaluation


# ----------------------------------------------------------------------------- umask


def test_outputs_and_checkpoints_follow_the_umask(trained: Checkpoints, tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", trained.features)
    proc = _cli(tmp_path, "embed", trained.path("fp32"), "in.npy", "-o", "out.npy", umask=0o022)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "out.npy").stat().st_mode) == 0o644
    proc = _cli(tmp_path, "embed", trained.path("fp32"), "in.npy", "-o", "out.npy",
                "--overwrite", umask=0o027)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "out.npy").stat().st_mode) == 0o640
    # A checkpoint folder is copied from a private temporary folder: it gets the umask's mode.
    source = tmp_path / "private"
    (source / "ds").mkdir(parents=True)
    source.chmod(0o700)
    (source / "ds" / "x.pt").write_bytes(b"x")
    previous = os.umask(0o022)
    try:
        storage.upload(str(source), str(tmp_path / "run" / "checkpoint_00000001"))
    finally:
        os.umask(previous)
    for folder in ("run", "run/checkpoint_00000001", "run/checkpoint_00000001/ds"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o755, folder
