"""Trainer-state files: atomic write, round trip, clear errors for missing or corrupted files."""

from __future__ import annotations

import io
import os
import random
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dist_contrast.errors import UserError
from dist_contrast.train.state import (
    TrainProgress,
    check_safe_to_load,
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


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_trainer_state_is_weights_only(tmp_path: Path) -> None:
    # numpy's Gaussian cache is part of its state: make it non-trivial.
    np.random.seed(3)
    np.random.randn()
    save_trainer_state(tmp_path, 0, {"progress": {"step": 1}, "rng": rng_state()})
    expected = _draws()
    path = state_file(tmp_path, 0)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert _draws()[:2] == expected[:2]


def test_old_format_with_a_numpy_rng_array_still_loads(tmp_path: Path) -> None:
    old = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    torch.save({"progress": {"step": 3}, "rng": old}, state_file(tmp_path, 0))
    expected = _draws()
    loaded = load_trainer_state(tmp_path, 0)
    assert loaded["progress"] == {"step": 3}
    set_rng_state(loaded["rng"])
    actual = _draws()
    assert actual[:2] == expected[:2]
    torch.testing.assert_close(actual[2], expected[2])


class _Payload:
    """Unpickling it would create a folder: code run by loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def test_a_file_that_needs_unsafe_unpickling_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"progress": {"step": 1}, "evil": _Payload(marker)}, state_file(tmp_path, 0))
    for call in (lambda: load_trainer_state(tmp_path, 0), lambda: check_safe_to_load(tmp_path)):
        with pytest.raises(UserError) as caught:
            call()
        message = str(caught.value)
        assert "could run code" in message and "os.makedirs" in message
        assert "trainer_state_rank0.pt" in message and "\n" not in message
    assert not marker.exists()


def test_empty_truncated_and_flipped_files_are_one_line_each(tmp_path: Path) -> None:
    path = state_file(tmp_path, 0)
    save_trainer_state(tmp_path, 0, {"bank": torch.randn(1000, 16)})
    data = path.read_bytes()
    path.write_bytes(b"")
    with pytest.raises(UserError, match=r"trainer_state_rank0\.pt' is empty \(0 bytes\)"):
        load_trainer_state(tmp_path, 0)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupted"):
        load_trainer_state(tmp_path, 0)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    flipped = bytearray(data)
    # The member's data start: its local header (30 bytes, name, extra field) is parsed here.
    start = member.header_offset + 30 + len(member.filename.encode())
    start += int.from_bytes(flipped[member.header_offset + 28 : member.header_offset + 30],
                            "little")
    flipped[start + member.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="fails its CRC check"):
        check_safe_to_load(tmp_path)


def test_a_large_bank_checks_in_seconds(tmp_path: Path) -> None:
    # 1M keys × 64 dims (256 MB): tensor data is memory-mapped; only the CRCs read it.
    save_trainer_state(tmp_path, 0, {"negatives": {"bank": {"vectors": torch.zeros(1 << 20, 64)}}})
    start = time.perf_counter()
    check_safe_to_load(tmp_path)
    assert time.perf_counter() - start < 30
