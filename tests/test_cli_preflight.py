"""Bad input found on the driver, before any worker starts: one line, exit 2, within seconds,
and nothing written (no run folder, no MLflow store), through the real CLI."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[1]


def _cli(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = Cli().run(*args, f"experiment.output_dir={tmp_path / 'results'}",
                     "experiment.run_name=bad", cwd=tmp_path, env=env, timeout=300)
    return proc, time.monotonic() - start


def _refused(tmp_path: Path, needle: str, *args: str, **env: str) -> None:
    proc, seconds = _cli(tmp_path, "train", *args, **env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error:"), proc.stderr
    assert needle in lines[0], lines[0]
    assert seconds < 30  # a generous bound: refused on the driver, no Ray start
    assert not (tmp_path / "results" / "bad").exists()
    assert not (tmp_path / "mlflow.db").exists()


def _corrupt_checkpoint(folder: Path) -> Path:
    (folder / "ds").mkdir(parents=True)
    (folder / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 not a zip")
    (folder / "latest").write_text("ds")
    for rank in (0, 1):
        (folder / f"trainer_state_rank{rank}.pt").write_bytes(b"PK\x03\x04 truncated")
    (folder / "meta.json").write_text('{"world_size": 2}')  # marked complete: its files are read
    return folder


@pytest.mark.parametrize(("overrides", "needle"), [
    (["trainer.num_workers=64"], "trainer.num_workers=64"),
    (["negatives.sources=[batch,queue]", "negatives.momentum_encoder=true",
      "negatives.queue.size=10000000000"], "queue"),
])
def test_resources_are_checked_before_anything_starts(
    tmp_path: Path, overrides: list[str], needle: str
) -> None:
    _refused(tmp_path, needle, str(ROOT / "configs/synthetic.yaml"), *overrides)


def test_a_corrupted_checkpoint_is_one_line(tmp_path: Path) -> None:
    folder = _corrupt_checkpoint(tmp_path / "old" / "checkpoint_00000010")
    _refused(tmp_path, "mp_rank_00_model_states.pt", str(ROOT / "configs/synthetic.yaml"),
             f"trainer.resume_from={folder}")


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "empty"),
    (None, "truncated"),
    (b"just some text, not numpy", "not a .npy file"),
])
def test_unusable_npy_files_are_one_line(tmp_path: Path, content: bytes | None,
                                         needle: str) -> None:
    path = tmp_path / "features.npy"
    if content is None:  # a real .npy cut short
        np.save(path, np.zeros((100, 8), dtype=np.float32))
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    _refused(tmp_path, needle, str(ROOT / "configs/digits.yaml"), "data.name=file",
             f"data.path={path}", "model.name=mlp", "data.test_fraction=0.2")


def test_an_unreachable_ray_address_is_refused_before_mlflow_is_touched(tmp_path: Path) -> None:
    _refused(tmp_path, "RAY_ADDRESS=127.0.0.1:9", str(ROOT / "configs/synthetic.yaml"),
             RAY_ADDRESS="127.0.0.1:9")


@pytest.mark.parametrize("overrides", [
    ["trainer.use_gpu=false"], ["trainer.use_gpu=true"],  # unquoted YAML booleans
    ["trainer.max_steps=6"],  # warm-up (50) capped, not refused
])
def test_what_people_write_is_accepted(tmp_path: Path, overrides: list[str]) -> None:
    proc, _ = _cli(tmp_path, "config", str(ROOT / "configs/synthetic.yaml"), *overrides)
    assert proc.returncode == 0, proc.stderr
