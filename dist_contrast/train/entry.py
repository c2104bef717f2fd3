"""The Ray entry point: what ``ray.train.torch.TorchTrainer`` runs on every worker.

Ray appears in the trainer only here and as the ``train`` module handed to
:meth:`Worker.run <dist_contrast.train.worker.Worker.run>` (report, checkpoints).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from dist_contrast import dist
from dist_contrast.config import Config
from dist_contrast.train import checkpoint
from dist_contrast.train.state import load_trainer_state
from dist_contrast.train.worker import Worker, build_worker


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Build this rank's worker (restoring a checkpoint when there is one) and train."""
    import ray.train

    cfg = Config.model_validate(loop_config["config"])
    torch.set_num_threads(cfg.trainer.threads_per_worker)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.trainer.threads_per_worker))
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)

    worker = _resume_or_build(cfg, loop_config, ray.train)
    try:
        worker.run(ray.train)
        worker.reporter.finish()
    except BaseException:
        worker.reporter.fail()
        raise


def _resume_or_build(cfg: Config, loop_config: dict[str, Any], train: Any) -> Worker:
    # A restart within this run (or a re-run with the same name and storage path) gets Ray's
    # latest checkpoint; otherwise trainer.resume_from names one to start from.
    checkpoint_found = train.get_checkpoint()
    if checkpoint_found is None and loop_config.get("resume_from"):
        checkpoint_found = train.Checkpoint(loop_config["resume_from"])
    queue = loop_config.get("progress_queue")
    if checkpoint_found is None:
        worker = build_worker(cfg, queue)
        worker.reporter.start(loop_config["params"], loop_config["config_yaml"])
        return worker
    # One download and one read of the trainer state (it holds the pools, e.g. a bank of
    # every instance's key): the MLflow run id and the restore both come from it.
    with checkpoint_found.as_directory() as directory:
        state = load_trainer_state(directory, dist.rank())
        run_id = state.get("mlflow_run_id")
        worker = build_worker(cfg, queue, run_id=str(run_id) if run_id else None)
        checkpoint.restore(worker.step, worker.progress, directory, state)
    return worker
