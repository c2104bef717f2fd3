"""Recipe "add a loss" (docs/architecture.md): an objective registered in the caller's own code
trains end to end through the real trainer (2 Ray workers, DeepSpeed, MLflow), with no change to
any module of the package.

Slow: a Ray runtime and two DeepSpeed engines start; marked ``slow`` and always run in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]

# The whole user program: a loss, its registry entry, a worker loop that registers it on every
# Ray worker, and the ordinary run. The toy loss is a plain InfoNCE written out by hand over the
# global batch, so a finite, falling loss says the trainer fed it what it declared.
SCRIPT = textwrap.dedent(
    """
    import math, sys
    import torch
    from dist_contrast.config import load_config
    from dist_contrast.objectives import Objective, register_objective
    from dist_contrast.orchestrate import run_training
    from dist_contrast.train.entry import train_loop_per_worker

    def toy_loss(inputs, tau, scale=1.0):
        logits = inputs.query.float() @ inputs.key.float().T / tau
        return scale * torch.nn.functional.cross_entropy(logits, inputs.positive_index)

    def register():
        register_objective("toy_info_nce", Objective(toy_loss, frozenset({"scale"})),
                           replace=True)

    def loop(loop_config):
        register()
        train_loop_per_worker(loop_config)

    register()
    cfg = load_config(sys.argv[1], sys.argv[2:])
    summary = run_training(cfg, train_loop=loop)
    print("RUN", summary.run_id, summary.metrics.get("step"))
    """
)


@pytest.mark.slow
def test_a_registered_objective_trains_through_the_real_trainer(tmp_path: Path) -> None:
    script = tmp_path / "user_program.py"
    script.write_text(SCRIPT)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(ROOT / "configs/synthetic.yaml"),
         "loss.name=toy_info_nce", "loss.params={scale: 2.0}", "trainer.max_steps=8",
         "trainer.batch_size=64", "trainer.log_every=4", "eval.every_steps=8",
         "checkpoint.every_steps=8", "optimizer.warmup_steps=2", "data.num_samples=2000",
         f"experiment.output_dir={tmp_path / 'results'}", "experiment.run_name=toy"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dist-contrast")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.name"] == "toy_info_nce"
    assert run.data.params["loss.params.scale"] == "2.0"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 8 and all(value == value for value in losses)  # every step, finite
    # Twice the cross-entropy over the 2 × 64 keys of the global batch: at the start it is
    # close to 2·log(128) and training lowers it.
    assert 0.5 * 2 * 4.852 < losses[0] < 1.5 * 2 * 4.852
    assert losses[-1] < losses[0]
