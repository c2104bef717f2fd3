"""Recipe "add a dataset" (docs/architecture.md): a dataset declared and registered in the
caller's own code trains end to end through the real trainer (Ray, DeepSpeed, MLflow), then
``embed`` and ``evaluate`` use the trained encoder, with no change to any module of the package.

The whole user program is the script below; it registers the dataset in the driver and, through
its training loop, on every Ray worker (each is its own process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from dist_contrast.cli import main
    from dist_contrast.config import load_config
    from dist_contrast.data import (
        Dataset, DataShape, FeatureAugment, Provenance, register_dataset, tensor_bundle,
    )
    from dist_contrast.driver.run import run_training
    from dist_contrast.train.entry import train_loop_per_worker

    WIDTH = 8

    def blobs(cfg, seed):
        # Four classes, each a blob around its own centre: rows [N, 8] and labels [N].
        rows = int(cfg.params.get("rows", 400))
        gen = torch.Generator().manual_seed(seed)
        centres = 3 * torch.randn(4, WIDTH, generator=gen)
        labels = torch.randint(0, 4, (rows,), generator=gen)
        return centres[labels] + torch.randn(rows, WIDTH, generator=gen), labels

    def build(cfg, seed, preprocessing):
        raw, labels = blobs(cfg, seed)
        augment = FeatureAugment(cfg.augment.noise_std, cfg.augment.feature_dropout)
        return tensor_bundle(cfg, seed, raw, labels, augment)

    BLOBS = Dataset(
        build=build,
        shape=lambda cfg: DataShape(int(cfg.params.get("rows", 400)), (WIDTH,)),
        provenance=lambda cfg, seed: Provenance(
            generator={"generator": "four gaussian blobs", "seed": seed, **cfg.params}),
        options=frozenset({"rows"}),
    )

    def register():
        register_dataset("blobs", BLOBS, replace=True)

    def loop(loop_config):
        register()
        train_loop_per_worker(loop_config)

    register()
    cfg = load_config(sys.argv[1], sys.argv[2:])
    summary = run_training(cfg, train_loop=loop)
    print("RUN", summary.run_id)
    assert main(["embed", summary.run_id, "new_rows.npy", "-o", "embedded.npy"]) == 0
    assert main(["evaluate", summary.run_id, "data.params={rows: 300}"]) == 0
    """
)

CONFIG = """\
data:
  name: blobs
  params: {rows: 400}
model: {hidden_dim: 32, embedding_dim: 16}
trainer: {num_workers: 1, batch_size: 32, max_steps: 4, log_every: 2}
optimizer: {warmup_steps: 1}
eval: {every_steps: 4}
checkpoint: {every_steps: 4}
"""


@pytest.mark.ray
def test_a_registered_dataset_trains_embeds_and_evaluates(tmp_path: Path) -> None:
    (tmp_path / "user_program.py").write_text(SCRIPT)
    (tmp_path / "blobs.yaml").write_text(CONFIG)
    np.save(tmp_path / "new_rows.npy", np.random.default_rng(0).normal(size=(10, 8)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "user_program.py", "blobs.yaml",
         f"experiment.output_dir={tmp_path / 'results'}", "experiment.run_name=blobs"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dist-contrast")
    assert experiment is not None
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    trained = runs["blobs"]
    assert trained.info.status == "FINISHED"
    assert trained.data.params["data.name"] == "blobs"
    # The run's dataset is the one the dataset declared: its generator, seed and settings.
    inputs = client.get_run(trained.info.run_id).inputs
    assert inputs is not None
    (dataset_input,) = inputs.dataset_inputs
    assert dataset_input.dataset.name == "blobs"
    assert "four gaussian blobs" in dataset_input.dataset.source
    losses = client.get_metric_history(trained.info.run_id, "train/loss")
    assert len(losses) == 4 and all(m.value == m.value for m in losses)  # every step, finite
    embedded = np.load(tmp_path / "embedded.npy")
    assert embedded.shape == (10, 16) and np.isfinite(embedded).all()
    (evaluation,) = [run for name, run in runs.items() if name != "blobs"]
    assert evaluation.data.params["data.params.rows"] == "300"
    assert 0 <= evaluation.data.metrics["eval/knn_acc"] <= 1
    assert evaluation.data.metrics["eval/raw_knn_acc"] > 0.5  # four well-separated blobs
