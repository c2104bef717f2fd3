"""Checkpoints: every rank saves DeepSpeed's state and its own trainer state, then every rank
reports the same checkpoint to Ray Train; a restart or resume reads both back.

What a checkpoint folder holds is described in :mod:`dist_contrast.train.state`.
"""

from __future__ import annotations

import tempfile
from typing import Any

from dist_contrast import dist
from dist_contrast.errors import UserError
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
        "rng": rng_state(),
        "mlflow_run_id": run_id,
    }


def load_trainer_state(step: TrainStep, progress: TrainProgress, state: dict[str, Any]) -> None:
    progress.load_state_dict(state["progress"])
    if step.momentum_encoder is not None and state.get("momentum_encoder") is not None:
        step.momentum_encoder.load_state_dict(state["momentum_encoder"])
    if step.pool is not None and state.get("negatives") is not None:
        step.pool.load_state_dict(state["negatives"])
    if state.get("normalizer") is not None:
        step.normalizer.load_state_dict(state["normalizer"])
    set_rng_state(state["rng"])


def save_and_report(
    train: Any, step: TrainStep, progress: TrainProgress, run_id: str | None,
    metrics: dict[str, float],
) -> None:
    """Every rank saves (DeepSpeed + trainer state), then every rank reports the same call."""
    report = {**metrics, "step": progress.step}
    with tempfile.TemporaryDirectory() as directory:
        step.engine.save_checkpoint(directory, tag=DEEPSPEED_TAG)
        save_trainer_state(directory, dist.rank(), trainer_state(step, progress, run_id))
        dist.barrier()
        train.report(report, checkpoint=train.Checkpoint.from_directory(directory))


def restore(step: TrainStep, progress: TrainProgress, directory: str,
            state: dict[str, Any]) -> None:
    """DeepSpeed's state from ``directory``, then the trainer state already read from it."""
    load_path, _ = step.engine.load_checkpoint(directory, tag=DEEPSPEED_TAG)
    if load_path is None:
        raise UserError(
            f"checkpoint '{directory}' has no DeepSpeed state; "
            "resume from a checkpoint this tool wrote or start a fresh run"
        )
    load_trainer_state(step, progress, state)
