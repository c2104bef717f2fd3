"""The learning-rate schedule: DeepSpeed's warm-up + cosine, continuous across a resume that
changes ``trainer.max_steps``.

DeepSpeed's ``WarmupCosineLR`` checkpoints only its position, so a run resumed with another
length would jump to wherever the new cosine is at that step (e.g. from 2e-5 at the end of a
20-step run to 1.5e-3 at step 21 of a 40-step one). This schedule also checkpoints its length;
when a resume changes it past the warm-up, the LR goes on from its value at the resume step along
a cosine to ``cos_min_ratio`` at the new end. Unchanged, it is DeepSpeed's schedule exactly.
"""

from __future__ import annotations

import math
from typing import Any

from deepspeed.runtime.lr_schedules import WarmupCosineLR, update_lr


class ResumableCosineLR(WarmupCosineLR):  # type: ignore[misc]
    """``WarmupCosineLR`` whose state includes its length, and a cosine that continues from
    ``(resumed_at, resumed_ratio)`` when a resume changed the length."""

    total_num_steps: int  # set by the (untyped) base class

    def __init__(self, optimizer: Any, **params: Any) -> None:
        super().__init__(optimizer, **params)
        self.resumed_at: int | None = None
        self.resumed_ratio = 1.0

    def get_lr_ratio(self) -> float:
        if self.resumed_at is None or self.last_batch_iteration < self.resumed_at:
            return float(super().get_lr_ratio())
        # As in the base class, the floor is reached at the last step, total_num_steps − 1.
        span = max(1, self.total_num_steps - 1 - self.resumed_at)
        progress = min(1.0, (self.last_batch_iteration - self.resumed_at) / span)
        cosine = (1 + math.cos(math.pi * progress)) / 2
        return self.cos_min_ratio + (self.resumed_ratio - self.cos_min_ratio) * cosine

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "total_num_steps": self.total_num_steps,
            "resumed_at": self.resumed_at,
            "resumed_ratio": self.resumed_ratio,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        super().load_state_dict(sd)
        new_total = self.total_num_steps
        # The saved schedule (a checkpoint of DeepSpeed's own scheduler has no length: same).
        self.total_num_steps = int(sd.get("total_num_steps") or new_total)
        self.resumed_at, self.resumed_ratio = sd.get("resumed_at"), sd.get("resumed_ratio", 1.0)
        changed = self.total_num_steps != new_total
        if changed and self.last_batch_iteration >= self.warmup_num_steps:
            ratio = self.get_lr_ratio()  # where the saved schedule stands now
            self.resumed_at, self.resumed_ratio = self.last_batch_iteration, ratio
        self.total_num_steps = new_total
        if changed:
            self._last_lr = update_lr(self.optimizer.param_groups, self.get_lr())
