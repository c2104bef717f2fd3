"""Our config -> DeepSpeed's config."""

from __future__ import annotations

from dist_contrast.config import Config
from dist_contrast.train.deepspeed_config import build_deepspeed_config


def _cfg(**sections: dict) -> Config:
    return Config.model_validate(sections)


def test_batch_sizes_zero_precision_and_clipping() -> None:
    cfg = _cfg(
        trainer={"batch_size": 32, "max_steps": 100},
        deepspeed={"zero_stage": 2, "precision": "bf16", "gradient_clipping": 0.5},
    )
    ds = build_deepspeed_config(cfg, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 32
    assert ds["train_batch_size"] == 128
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == 0.5


def test_optimizer_and_schedules() -> None:
    cfg = _cfg(
        optimizer={"name": "adamw", "lr": 0.01, "warmup_steps": 7}, trainer={"max_steps": 50}
    )
    ds = build_deepspeed_config(cfg, world_size=1)
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["optimizer"]["params"]["lr"] == 0.01
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 7
    assert ds["scheduler"]["params"]["total_num_steps"] == 50
    constant = build_deepspeed_config(
        _cfg(optimizer={"schedule": "constant", "warmup_steps": 0}), 1
    )
    assert constant["scheduler"]["type"] == "WarmupLR"
    assert constant["scheduler"]["params"]["warmup_num_steps"] == 1
