"""Runs that do not go straight through, without Ray: non-finite steps, and a resume into a fresh
MLflow store with a longer schedule. The driver's plan and MLflow run, then the real worker loop
in two gloo processes (``tests/inprocess.py``); the Ray side of such runs (restarts, signals,
the CLI's one line) is tests/test_reliability.py's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from dist_contrast.errors import RunFailed
from tests.conftest import metric_history, store_runs
from tests.faults import nan_at_steps
from tests.inprocess import LocalRun, train_in_process

# The session's trained checkpoints (or run) are made once per pytest-xdist process: one process
# for the module (make check runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("local_runs")

ROOT = Path(__file__).resolve().parents[2]
STEPS = 20  # tests/test_reliability.py runs 60 under Ray; the schedule scales with it
# Small and quick: 2 workers × 128 rows a step, a checkpoint every 10 steps.
BASE = [
    "configs/synthetic.yaml", f"trainer.max_steps={STEPS}", "trainer.batch_size=128",
    "data.num_samples=6000", "trainer.log_every=5", "eval.every_steps=1000",
    "checkpoint.every_steps=10", "optimizer.warmup_steps=5",
]


def _train(tmp: Path, store: Path, run_name: str, *overrides: str,
           setup: functools.partial[None] | None = None) -> LocalRun:
    return train_in_process(ROOT / BASE[0], *BASE[1:], f"experiment.run_name={run_name}",
                            f"tracking.tracking_uri=sqlite:///{store}", *overrides,
                            folder=tmp, setup=setup)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, float]]]:
    """An uninterrupted run: its folder and its loss at every step."""
    tmp = tmp_path_factory.mktemp("reference")
    store = tmp / "mlflow.db"
    _train(tmp, store, "ref")
    (run,) = store_runs(store)
    history = metric_history(store, run.info.run_id)
    assert [step for step, _ in history] == list(range(1, STEPS + 1))
    return tmp, history


def test_resume_from_starts_a_new_run_in_a_fresh_store_with_a_continuous_lr(
    tmp_path: Path, reference: tuple[Path, list[tuple[int, float]]]
) -> None:
    source = reference[0] / "results" / "ref" / f"checkpoint_{STEPS:08d}"
    meta = json.loads((source / "meta.json").read_text())
    store = tmp_path / "fresh.db"
    resumed = _train(tmp_path, store, "longer", f"trainer.resume_from={source}",
                     f"trainer.max_steps={STEPS + 20}")
    assert "trainer.max_steps" in " ".join(resumed.plan.notes)  # the schedule change is said
    (run,) = store_runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dist_contrast.resumed_from_checkpoint"] == str(source)
    assert run.data.tags["dist_contrast.resumed_from_run"] == meta["mlflow_run_id"]
    history = metric_history(store, run.info.run_id)
    assert [step for step, _ in history] == list(range(STEPS + 1, STEPS + 21))
    reference_store = reference[0] / "mlflow.db"
    (source_run,) = store_runs(reference_store)
    lr_before = metric_history(reference_store, source_run.info.run_id, "train/lr")[-1][1]
    lr_after = metric_history(store, run.info.run_id, "train/lr")
    assert abs(lr_after[0][1] - lr_before) <= 0.05 * lr_before  # no jump at the resume
    assert all(b[1] <= a[1] + 1e-12 for a, b in zip(lr_after, lr_after[1:], strict=False))


def test_non_finite_steps_are_skipped_and_too_many_in_a_row_stop_the_run(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    # The objective itself gives NaN at steps 3, 6, 7 and 8, on every rank.
    nan = functools.partial(nan_at_steps, "info_nce", [3, 6, 7, 8])
    with pytest.raises(RunFailed) as failed:
        _train(tmp_path, store, "nan", "trainer.max_bad_steps=3", "checkpoint.every_steps=2",
               setup=nan)
    assert failed.value.exit_code == 1
    last = str(failed.value)
    assert "steps 6-8 had a non-finite loss" in last and "trainer.max_bad_steps=3" in last
    assert "checkpoint_00000006" in last  # the last good checkpoint, named and kept
    assert (tmp_path / "results" / "nan" / "checkpoint_00000006" / "meta.json").is_file()
    (run,) = store_runs(store)
    assert run.info.status == "FAILED"
    skipped = dict(metric_history(store, run.info.run_id, "train/skipped_steps"))
    assert skipped[2] == 0 and skipped[3] == 1 and skipped[6] == 2  # counted as they happen


def test_a_gradcache_run_logs_to_mlflow_and_resumes_where_it_stopped(
    tmp_path: Path, reference: tuple[Path, list[tuple[int, float]]]
) -> None:
    """GradCache (chunks of 48 of each worker's 128 rows) in the real worker loop on two gloo
    processes: it learns what the run without it learns, and a resume from its step-10
    checkpoint into a fresh store logs the uninterrupted run's losses."""
    chunks = "trainer.grad_cache={chunk_size: 48}"
    whole = tmp_path / "whole"
    _train(whole, whole / "mlflow.db", "cached", chunks)
    (run,) = store_runs(whole / "mlflow.db")
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.grad_cache.chunk_size"] == "48"
    history = metric_history(whole / "mlflow.db", run.info.run_id)
    # The same steps as without it, to float32 noise over 20 steps (measured: 1.7e-7 at most).
    for (step, loss), (ref_step, ref_loss) in zip(history, reference[1], strict=True):
        assert step == ref_step and loss == pytest.approx(ref_loss, rel=1e-5)
    source = whole / "results" / "cached" / "checkpoint_00000010"
    resumed = tmp_path / "resumed"
    _train(resumed, resumed / "mlflow.db", "again", chunks, f"trainer.resume_from={source}")
    (again,) = store_runs(resumed / "mlflow.db")
    assert metric_history(resumed / "mlflow.db", again.info.run_id) == history[10:]
