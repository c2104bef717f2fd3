"""Our config -> a DeepSpeed config dict (ZeRO stage, precision, clipping, optimiser, LR schedule).

DeepSpeed lives only in ``dist_contrast.train``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from dist_contrast.config import Config

#: DeepSpeed's shared-memory all-reduce op for CPU processes on one machine.
SHM_COMM_OP = "deepspeed_shm_comm"


def skip_shm_comm_op() -> None:
    """Tell DeepSpeed not to build its CPU shared-memory all-reduce op.

    DeepSpeed's CPU backend JIT-compiles that op (C++, about a minute on two cores) the first
    time a machine or pod starts it, in every worker at once, and uses it only for
    tensor-parallel inference (``inference_all_reduce``); training's collectives are gloo's.
    DeepSpeed reads the op's availability from the dict it caches for exactly this.
    """
    import deepspeed.ops

    with contextlib.suppress(Exception):
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def warmup_steps(cfg: Config) -> int:
    """The warm-up DeepSpeed gets: ``optimizer.warmup_steps``, at least 1 (DeepSpeed's
    schedulers refuse 0) and at most ``trainer.max_steps - 1``.

    A warm-up as long as the run would never reach the configured learning rate (and leave
    WarmupCosineLR no step to decay over), so it is capped to end one step before the run
    does; the driver prints a note when it caps (``preflight.config_notes``). Below the cap
    the value is passed through unchanged.
    """
    return max(1, min(cfg.optimizer.warmup_steps, cfg.trainer.max_steps - 1))


def build_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The ``config=`` argument of ``deepspeed.initialize`` for one worker of ``world_size``.

    Adam/AdamW run as ``torch.optim`` (``torch_adam``): the fused CUDA kernel does not exist on
    CPU, and the CPU-offload kernel is only needed with ZeRO offload, which we do not use.
    """
    opt = cfg.optimizer
    warmup = warmup_steps(cfg)
    optimizer: dict[str, Any] = {
        "type": "AdamW" if opt.name == "adamw" else "Adam",
        "params": {
            "lr": opt.lr,
            "betas": list(opt.betas),
            "eps": 1e-8,
            "weight_decay": opt.weight_decay,
            "torch_adam": True,
        },
    }
    if opt.name == "sgd":  # DeepSpeed builds torch.optim.SGD for a type it does not own
        optimizer = {"type": "SGD", "params": {
            "lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay}}
    if opt.schedule == "cosine":
        scheduler = {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": cfg.trainer.max_steps,
                "warmup_min_ratio": 0.0,
                "warmup_num_steps": warmup,
                "cos_min_ratio": opt.min_lr_ratio,
                "warmup_type": "linear",
            },
        }
    else:
        scheduler = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": opt.lr,
                "warmup_num_steps": warmup,
                "warmup_type": "linear",
            },
        }
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.trainer.batch_size,
        "train_batch_size": cfg.trainer.batch_size * world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.deepspeed.gradient_clipping,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": cfg.deepspeed.precision == "bf16"},
        "steps_per_print": 10**9,  # our own progress line replaces DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if opt.name == "sgd":
        # DeepSpeed asks for this flag before ZeRO partitions an optimiser it does not own;
        # torch.optim.SGD keeps no state that ZeRO's flat partitions would break.
        ds["zero_allow_untested_optimizer"] = True
    return ds
