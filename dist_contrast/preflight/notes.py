"""What the run adjusts in the config, one line each, printed before it starts."""

from __future__ import annotations

from dist_contrast.config import Config
from dist_contrast.train.deepspeed_config import warmup_steps


def config_notes(cfg: Config) -> list[str]:
    """What the run adjusts in the config, one line each (print them before it starts)."""
    notes = []
    warmup, max_steps = cfg.optimizer.warmup_steps, cfg.trainer.max_steps
    if warmup >= max_steps:
        capped = warmup_steps(cfg)
        notes.append(
            f"optimizer.warmup_steps={warmup} ≥ trainer.max_steps={max_steps}: warm-up capped "
            f"at {capped} step{'s' if capped != 1 else ''}"
        )
    return notes
