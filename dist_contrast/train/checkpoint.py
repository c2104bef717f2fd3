"""Checkpoints: every rank saves DeepSpeed's state and its own trainer state, then every rank
reports the same checkpoint to Ray Train; a restart or resume reads both back.

What a checkpoint folder holds is described in :mod:`dist_contrast.train.state`; where the
folders live and which are complete, in :mod:`dist_contrast.train.storage`.
"""

from __future__ import annotations

import tempfile
from typing import Any

from dist_contrast import dist
from dist_contrast.config import Config
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.errors import UserError
from dist_contrast.train import storage
from dist_contrast.train.state import (
    DEEPSPEED_TAG,
    TrainProgress,
    rng_state,
    save_trainer_state,
    set_rng_state,
)
from dist_contrast.train.step import TrainStep


def trainer_state(step: TrainStep, progress: TrainProgress, run_id: str | None) -> dict[str, Any]:
    """Everything beside DeepSpeed's own state that the run needs to continue exactly."""
    encoder, pool = step.momentum_encoder, step.pool
    return {
        "progress": progress.state_dict(),
        "momentum_encoder": encoder.state_dict() if encoder is not None else None,
        "negatives": pool.state_dict() if pool is not None else None,
        "normalizer": step.normalizer.state_dict(),
        "remining": step.corpus.state_dict() if step.corpus is not None else None,
        "rng": rng_state(),
        "mlflow_run_id": run_id,
    }


def apply_trainer_state(step: TrainStep, progress: TrainProgress, state: dict[str, Any]) -> None:
    """Put a trainer state already read from a checkpoint (:func:`trainer_state`'s dict, read
    by :func:`~dist_contrast.train.state.load_trainer_state`) into the step and the progress."""
    progress.load_state_dict(state["progress"])
    if step.momentum_encoder is not None and state.get("momentum_encoder") is not None:
        step.momentum_encoder.load_state_dict(state["momentum_encoder"])
    if step.pool is not None and state.get("negatives") is not None:
        step.pool.load_state_dict(state["negatives"])
    if state.get("normalizer") is not None:
        step.normalizer.load_state_dict(state["normalizer"])
    if step.corpus is not None and state.get("remining") is not None:
        step.corpus.load_state_dict(state["remining"])
    set_rng_state(state["rng"])


def save_and_report(
    train: Any, step: TrainStep, progress: TrainProgress, run_id: str | None,
    metrics: dict[str, float], cfg: Config, preprocessing: Preprocessing | None = None,
) -> None:
    """Every rank saves (DeepSpeed + trainer state) into the run's ``checkpoint_<step>`` folder;
    once every rank's files are there, rank 0 marks it complete and prunes old ones; then every
    rank reports the metrics to Ray Train.

    The checkpoints are ours, not Ray's (Ray is given metrics only): Ray can only know the
    checkpoints it registered before a failure, so a restart would resume from an older one,
    and its retention would leave the newer ones on disk (see :mod:`.storage`).

    ``meta.json`` also holds the resolved config and the data's ``preprocessing``, so that the
    folder alone rebuilds the encoder (``dist_contrast.serving.load_encoder``)."""
    run_dir = storage.run_directory(cfg)
    target = storage.join(run_dir, storage.checkpoint_name(progress.step))
    with tempfile.TemporaryDirectory() as directory:
        step.engine.save_checkpoint(directory, tag=DEEPSPEED_TAG)
        save_trainer_state(directory, dist.rank(), trainer_state(step, progress, run_id))
        storage.upload(directory, target)
    dist.barrier()  # every rank's files are in place
    if dist.is_rank_zero():
        meta = {"step": progress.step, "max_steps": cfg.trainer.max_steps,
                "world_size": dist.world_size(), "mlflow_run_id": run_id,
                "config": cfg.model_dump(mode="json"),
                "preprocessing": None if preprocessing is None else preprocessing.to_dict()}
        storage.mark_complete(target, meta)
        storage.prune(run_dir, cfg.checkpoint.num_to_keep)
    train.report({**metrics, "step": progress.step, "checkpoint": target})


def restore(step: TrainStep, progress: TrainProgress, directory: str,
            state: dict[str, Any]) -> None:
    """DeepSpeed's state from ``directory``, then the trainer state already read from it."""
    load_path, _ = step.engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
    if load_path is None:
        raise UserError(
            f"checkpoint '{directory}' has no DeepSpeed state; "
            "resume from a checkpoint this tool wrote or start a fresh run"
        )
    apply_trainer_state(step, progress, state)
