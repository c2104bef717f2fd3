"""Trainer-state files: atomic write, round trip, clear errors for missing or corrupted files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_contrast.errors import UserError
from dist_contrast.train.state import (
    TrainProgress,
    load_trainer_state,
    rng_state,
    save_trainer_state,
    set_rng_state,
    state_file,
)


def test_round_trip_and_rng(tmp_path: Path) -> None:
    progress = TrainProgress(step=7)
    state = {"progress": progress.state_dict(), "rng": rng_state()}
    save_trainer_state(tmp_path, 1, state)
    expected = torch.rand(3)
    loaded = load_trainer_state(tmp_path, 1)
    restored = TrainProgress()
    restored.load_state_dict(loaded["progress"])
    assert restored == progress
    set_rng_state(loaded["rng"])
    torch.testing.assert_close(torch.rand(3), expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_and_corrupted_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="trainer.num_workers"):
        load_trainer_state(tmp_path, 0)
    state_file(tmp_path, 0).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupted"):
        load_trainer_state(tmp_path, 0)
