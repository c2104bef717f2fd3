"""Recipe "add a loss" (docs/architecture.md): an objective registered in the caller's own code
trains end to end through the real trainer (2 workers, DeepSpeed, MLflow), with no change to any
module of the package.

Without Ray: the driver's plan and MLflow run, then the worker loop in two gloo processes
(``tests/inprocess.py``). Plugging a wrapper in as Ray Train's per-worker function
(``run_training(cfg, train_loop=...)``) is tested with Ray in tests/data/test_custom_dataset.py.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from dist_contrast import objectives
from dist_contrast.objectives import Objective, register_objective
from tests.inprocess import train_in_process

ROOT = Path(__file__).resolve().parents[2]


# The user's code: a loss and its registry entry. The toy loss is a plain InfoNCE written out
# by hand over the global batch, so a finite, falling loss says the trainer fed it what it
# declared.
def toy_loss(inputs: objectives.ObjectiveInputs, tau: torch.Tensor,
             scale: float = 1.0) -> torch.Tensor:
    logits = inputs.query.float() @ inputs.key.float().T / tau
    return scale * torch.nn.functional.cross_entropy(logits, inputs.positive_index)


def register() -> None:
    register_objective("toy_info_nce", Objective(toy_loss, frozenset({"scale"})), replace=True)


def test_a_registered_objective_trains_through_the_real_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Registered on the driver (its checks read the registry) for this test only, and on
    # every worker by the setup.
    monkeypatch.setitem(objectives._REGISTRY, "toy_info_nce",
                        Objective(toy_loss, frozenset({"scale"})))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train_in_process(
        ROOT / "configs/synthetic.yaml",
        "loss.name=toy_info_nce", "loss.params={scale: 2.0}", "trainer.max_steps=8",
        "trainer.batch_size=64", "trainer.log_every=4", "eval.every_steps=8",
        "checkpoint.every_steps=8", "optimizer.warmup_steps=2", "data.num_samples=2000",
        "experiment.run_name=toy", folder=tmp_path, setup=register,
    )
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
