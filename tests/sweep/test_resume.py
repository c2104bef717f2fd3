"""Re-running a sweep whose children all finished runs nothing: no Ray start, the parent and
the children kept (a sqlite store filled by hand, no training)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from dist_contrast.errors import UserError
from dist_contrast.sweep import expand, parse_grid, run_sweep
from dist_contrast.sweep.grid import digest
from dist_contrast.tracking import PARENT_TAG, ensure_experiment, open_sweep_parent

SYNTHETIC = str(Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml")


def test_a_finished_sweep_runs_nothing_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             ) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    overrides = [f"tracking.tracking_uri={uri}", f"experiment.output_dir={tmp_path / 'r'}",
                 "tracking.experiment=done", "data.num_samples=600", "trainer.batch_size=64"]
    trials = expand([SYNTHETIC], parse_grid(["loss.temperature=0.1,0.5"]), seeds=1,
                    overrides=overrides, name="again")
    ensure_experiment(uri, "done", tmp_path / "art")
    parent, _ = open_sweep_parent(uri, "done", "again", digest=digest(trials), params={},
                                  tags={})
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("done")
    assert experiment is not None
    finished = {}
    for trial in trials:
        run = client.create_run(experiment.experiment_id, run_name=trial.run_name,
                                tags={PARENT_TAG: parent})
        client.log_metric(run.info.run_id, "eval/knn_acc", 0.5)
        client.set_terminated(run.info.run_id, "FINISHED")
        finished[trial.run_name] = run.info.run_id

    import dist_contrast.sweep.runner as runner

    def no_ray(*args: object) -> None:
        raise AssertionError("Ray was started although every child had finished")

    monkeypatch.setattr(runner, "connect", no_ray)
    lines: list[str] = []
    summary = run_sweep(trials, name="again", grid_text="g", seeds=1, write=lines.append)
    assert summary.parent_id == parent and not summary.failed
    assert {o.status for o in summary.outcomes} == {"SKIPPED"}
    assert {o.run_id for o in summary.outcomes} == set(finished.values())
    assert any("nothing to run" in line for line in lines)
    assert client.get_run(parent).info.status == "FINISHED"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the parent and its two children, nothing new

    # Another grid under the same name is refused, not mixed in.
    other = expand([SYNTHETIC], parse_grid(["loss.temperature=0.2"]), seeds=1,
                   overrides=overrides, name="again")
    with pytest.raises(UserError, match="already has a sweep named 'again' with other trials"):
        run_sweep(other, name="again", grid_text="g", seeds=1, write=lines.append)
