"""Bad data found on the driver, through the real CLI: one line naming the problem and the fix,
exit 2, within seconds, before Ray or MLflow start, and nothing left behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.forks import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
data:
  name: file
  path: {path}
trainer:
  num_workers: 1
  max_steps: 2
"""


def _cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
               "DS_ACCELERATOR": "cpu"}
    environ.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    proc = run_cli([*args, f"experiment.output_dir={tmp_path / 'results'}",
                    "experiment.run_name=bad"], cwd=tmp_path, timeout=600, env=environ)
    return proc, time.monotonic() - start


def _refused(tmp_path: Path, needles: list[str], *args: str, within: float = 30) -> str:
    """Train with ``args``: exit 2 with one line holding every needle, in ``within`` seconds,
    and nothing written (no run folder, no MLflow store, no other new file)."""
    before = set(os.listdir(tmp_path))
    proc, seconds = _cli(tmp_path, "train", *args)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dist-contrast: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert seconds < within, seconds
    assert set(os.listdir(tmp_path)) == before  # no results/, no mlflow.db, no stray file
    return lines[0]


def _config(tmp_path: Path, path: str) -> str:
    config = tmp_path / "cfg.yaml"
    config.write_text(CONFIG.format(path=path))
    return str(config)


def test_a_missing_labels_file_names_data_labels_path(tmp_path: Path) -> None:
    np.save(tmp_path / "good.npy", np.random.default_rng(0).normal(size=(40, 4)))
    line = _refused(tmp_path, ["labels.npy: file not found", "check data.labels_path"],
                    _config(tmp_path, "good.npy"), "data.labels_path=labels.npy")
    assert "check data.path" not in line


@pytest.mark.parametrize(("workers", "shard"), [(1, 80), (2, 40)])
def test_a_batch_larger_than_a_shard_is_refused_with_the_largest_that_fits(
    tmp_path: Path, workers: int, shard: int
) -> None:
    # 100 rows, 20 held out: 80 training rows, 80 // workers on each worker.
    np.save(tmp_path / "good.npy", np.random.default_rng(0).normal(size=(100, 4)))
    _refused(tmp_path, [f"trainer.batch_size={shard + 1} is larger than a worker's shard",
                        f"{shard} rows per worker", f"set trainer.batch_size={shard} or less"],
             _config(tmp_path, "good.npy"), f"trainer.num_workers={workers}",
             f"trainer.batch_size={shard + 1}")


def test_a_million_column_npy_is_refused_from_its_header_with_the_model_size(
    tmp_path: Path
) -> None:
    rows, width = 12, 1_000_000  # 48 MB of float32: small on disk, 256M parameters in the MLP
    array = np.lib.format.open_memmap(tmp_path / "wide.npy", mode="w+", dtype=np.float32,
                                      shape=(rows, width))
    array[:] = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    array.flush()
    del array
    _refused(tmp_path, ["256,000,000 of them in the first layer",
                        "1,000,000 input features × model.hidden_dim=256",
                        "reduce the input features", "trainer.use_gpu=true"],
             _config(tmp_path, "wide.npy"), "trainer.batch_size=8", within=60)


def test_a_wide_parquet_file_is_refused_from_its_metadata(tmp_path: Path) -> None:
    # 30,000 columns × model.hidden_dim=4096: 123M parameters in the first layer alone (a
    # wide table is slow to write, so the width comes from the model here).
    width = 30_000
    table = pa.table({f"f{i}": np.zeros(12, dtype=np.float32) for i in range(width)})
    pq.write_table(table, tmp_path / "wide.parquet")
    _refused(tmp_path, ["30,000 input features × model.hidden_dim=4096"],
             _config(tmp_path, "wide.parquet"), "trainer.batch_size=8",
             "model.hidden_dim=4096", within=60)


def test_an_unknown_dataset_names_the_registered_ones(tmp_path: Path) -> None:
    _refused(tmp_path, ["data.name='imagenet' is unknown", "synthetic, digits, file"],
             str(ROOT / "configs/synthetic.yaml"), "data.name=imagenet")
