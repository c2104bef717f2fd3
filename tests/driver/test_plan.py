"""The run's plan: paths resolved against the caller's folder once, the output folder and the
objective against the data checked before anything starts, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dist_contrast.config import Config, validate
from dist_contrast.driver.plan import check_output_dir, make_plan
from dist_contrast.errors import UserError


def _config(**sections: Any) -> Config:
    base = {"experiment": {"run_name": "r"},
            "data": {"name": "synthetic", "num_samples": 400, "dim": 8},
            "trainer": {"num_workers": 1, "batch_size": 16, "max_steps": 2}}
    return validate({**base, **sections}, source="test")


def test_relative_data_paths_are_resolved_once_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    np.save(work / "good.npy", np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32))
    np.save(work / "labels.npy", np.arange(200) % 4)
    monkeypatch.chdir(work)
    plan = make_plan(_config(data={"name": "file", "path": "good.npy",
                                   "labels_path": "labels.npy"}), local=False)
    cfg = plan.config
    assert cfg.data.path == str(work / "good.npy")
    assert cfg.data.labels_path == str(work / "labels.npy")
    assert cfg.experiment.output_dir == str(work / "results")
    assert plan.run_dir == str(work / "results" / "r")
    assert (plan.data.train_size, plan.data.input_shape, plan.data.num_classes) == (160, (6,), 4)
    assert plan.resume_source is None and not plan.continues
    assert not (work / "results").exists()  # the plan writes nothing
    # The workers run elsewhere: the resolved paths still name the files.
    monkeypatch.chdir(tmp_path)
    assert Path(cfg.data.path).is_file()


def test_a_supervised_loss_on_data_without_labels_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((100, 4), dtype=np.float32))
    cfg = _config(experiment={"run_name": "r", "output_dir": str(tmp_path / "out")},
                  data={"name": "file", "path": str(tmp_path / "x.npy")},
                  loss={"name": "supcon"})
    with pytest.raises(UserError, match=r"loss.name=supcon .* needs labels.*data.labels_path"):
        make_plan(cfg, local=False)


@pytest.mark.parametrize("case", ["file", "below_file", "proc"])
def test_an_unusable_output_dir_is_one_line(tmp_path: Path, case: str) -> None:
    (tmp_path / "a_file").write_text("x")
    path = {"file": tmp_path / "a_file", "below_file": tmp_path / "a_file" / "sub",
            "proc": Path("/proc/nope")}[case]
    with pytest.raises(UserError, match=r"experiment.output_dir=.*(not a folder|cannot be used)"):
        check_output_dir(str(path))
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_a_missing_output_dir_under_a_writable_folder_is_fine_and_not_created(
    tmp_path: Path
) -> None:
    check_output_dir(str(tmp_path / "new" / "deeper"))
    check_output_dir("s3://bucket/runs")  # left to the storage layer
    assert os.listdir(tmp_path) == []
