"""Checkpoint files written beside DeepSpeed's own, one per rank.

DeepSpeed's ``save_checkpoint`` holds the model, optimiser and LR-scheduler state. Everything
else the run needs to continue (step counter, negative pools, momentum encoder, τ estimate,
RNG states) goes into ``trainer_state_rank{r}.pt`` through ``state_dict``: a sharded pool
differs per rank, so every rank writes and reads its own file.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_contrast.errors import UserError

DEEPSPEED_TAG = "ds"


@dataclass
class TrainProgress:
    """Where the run stands; restored on resume."""

    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def state_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"trainer_state_rank{rank}.pt"


def save_trainer_state(directory: str | Path, rank: int, state: dict[str, Any]) -> Path:
    """Write atomically: a crash mid-write leaves the previous file (or none), never half a file."""
    path = state_file(directory, rank)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_trainer_state(directory: str | Path, rank: int) -> dict[str, Any]:
    path = state_file(directory, rank)
    if not path.is_file():
        raise UserError(
            f"checkpoint '{directory}' has no {path.name}; it was written by another world size "
            "or is incomplete: resume with the same trainer.num_workers or start a fresh run"
        )
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise UserError(
            f"checkpoint file '{path}' is corrupted ({type(exc).__name__}); "
            "resume from an earlier checkpoint or start a fresh run"
        ) from None
    return state
