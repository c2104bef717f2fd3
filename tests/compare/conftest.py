"""Sqlite MLflow stores with synthetic finished runs (no training). ``store``: 2 losses × 2 τ ×
3 seeds as children of a sweep parent, a `simple` group at one τ, and a FAILED run to leave out.
``sweep_store``: two sweep configs (τ in one, the MoCo momentum in the other) × 3 seeds, with
eval metrics at several steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

EXPERIMENT = "tau-grid"

# (loss, τ) -> per-seed final eval/knn_acc; other metrics derive from these numbers.
KNN: dict[tuple[str, str], list[float]] = {
    ("infonce", "0.1"): [0.80, 0.82, 0.84],
    ("infonce", "0.5"): [0.70, 0.74, 0.72],
    ("hcl", "0.1"): [0.85, 0.86, 0.90],
    ("hcl", "0.5"): [0.60, 0.66, 0.63],
}


@dataclass(frozen=True)
class Store:
    uri: str
    parent_id: str
    experiment: str
    tmp: Path


def _log_run(client, experiment_id: str, params: dict[str, str], metrics: dict[str, float],
             parent_id: str | None, status: str = "FINISHED") -> str:
    from mlflow.entities import Metric, Param

    tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
    run_id = client.create_run(experiment_id, tags=tags, run_name=params["experiment.run_name"]
                               ).info.run_id
    history = [Metric("train/loss", 5.0 - step * 0.1 * metrics["eval/knn_acc"], 0, step)
               for step in range(5)]
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 10) for k, v in metrics.items()] + history)
    client.set_terminated(run_id, status=status)
    return run_id


def _params(loss: str, tau: str, seed: int) -> dict[str, str]:
    return {"loss.name": loss, "loss.temperature": tau, "experiment.seed": str(seed),
            "experiment.run_name": f"{loss}-{tau}-{seed}", "experiment.output_dir": f"/r/{seed}",
            "tracking.uri": "sqlite:///x.db", "data.path": "same.parquet"}


def _metrics(knn: float, collapsed: bool = False) -> dict[str, float]:
    return {"eval/knn_acc": knn, "eval/linear_probe_acc": knn - 0.05,
            "eval/uniformity": -2.0 * knn, "eval/tolerance": 1.0 - knn,
            "diag/penalty_entropy": 3.0 * knn, "eval/local_separation": knn / 2,
            "eval/collapsed": 1.0 if collapsed else 0.0}


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    import mlflow

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp / "art").as_uri())
    parent = client.create_run(experiment_id, run_name="sweep",
                               tags={"dist_contrast.sweep": "true"}).info.run_id
    client.set_terminated(parent, status="FINISHED")
    for (loss, tau), values in KNN.items():
        for seed, knn in enumerate(values):
            _log_run(client, experiment_id, _params(loss, tau, seed),
                     _metrics(knn, collapsed=(loss, tau, seed) == ("hcl", "0.5", 1)), parent)
    # Stand-alone (no parent): `simple` at one τ, and a run that failed.
    for seed, knn in enumerate([0.50, 0.55]):
        _log_run(client, experiment_id, _params("simple", "1.0", seed), _metrics(knn), None)
    _log_run(client, experiment_id, _params("infonce", "0.1", 9), _metrics(0.1), parent,
             status="FAILED")
    return Store(uri, parent, EXPERIMENT, tmp)


# A sweep as `dist-contrast sweep` logs it: children tagged with their config file, eval metrics
# at steps 0, 50 and 100, train/loss at every step. (config, τ, momentum) -> final eval/knn_acc.
SWEEP_EXPERIMENT = "tau-sweep"
SWEEP_KNN: dict[tuple[str, str, str], list[float]] = {
    ("configs/study/contrastive.yaml", "0.2", "0.99"): [0.80, 0.85, 0.82],
    ("configs/study/contrastive.yaml", "0.5", "0.99"): [0.78, 0.86, 0.80],
    ("configs/study/moco.yaml", "0.2", "0.9"): [0.90, 0.93, 0.91],
    ("configs/study/moco.yaml", "0.2", "0.999"): [0.95, 0.96, 0.97],
}
EVAL_STEPS = (0, 50, 100)


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(SWEEP_EXPERIMENT,
                                             artifact_location=(tmp / "art").as_uri())
    parent = client.create_run(experiment_id, run_name="sweep",
                               tags={"dist_contrast.sweep": "true"}).info.run_id
    client.set_terminated(parent, status="FINISHED")
    for (config, tau, momentum), values in SWEEP_KNN.items():
        for seed, knn in enumerate(values):
            name = f"{config.rsplit('/', 1)[-1][:-5]}-{tau}-{momentum}-{seed}"
            params = {"loss.name": "info_nce", "loss.temperature": tau,
                      "negatives.momentum": momentum, "experiment.seed": str(seed),
                      "experiment.run_name": name, "trainer.max_steps": "100"}
            tags = {"mlflow.parentRunId": parent, "dist_contrast.sweep.config": config}
            run_id = client.create_run(experiment_id, run_name=name).info.run_id
            # Each eval climbs towards the final value; uniformity and tolerance follow it.
            metrics = [Metric("train/loss", 5.0 - step * 0.01 * knn, 0, step)
                       for step in range(1, 101)]
            for step in EVAL_STEPS:
                value = knn * (0.5 + step / 200)
                metrics += [Metric("eval/knn_acc", value, 0, step),
                            Metric("eval/uniformity", -2.0 * value, 0, step),
                            Metric("eval/tolerance", 1.0 - value, 0, step)]
            client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()], metrics=metrics)
            client.set_terminated(run_id, status="FINISHED")
    return Store(uri, parent, SWEEP_EXPERIMENT, tmp)
