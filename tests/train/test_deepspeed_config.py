"""Our config -> DeepSpeed's config."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_contrast.config import Config
from dist_contrast.train.deepspeed_config import (
    SHM_COMM_OP,
    build_deepspeed_config,
    warmup_steps,
)


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


def test_configs_below_the_cap_are_unchanged() -> None:
    # What build_deepspeed_config gave for configs/synthetic.yaml before the cap existed.
    from dist_contrast.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml")
    assert build_deepspeed_config(cfg, world_size=2) == {
        "train_micro_batch_size_per_gpu": 256,
        "train_batch_size": 512,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {
            "lr": 0.002, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0001,
            "torch_adam": True,
        }},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": 2000, "warmup_min_ratio": 0.0, "warmup_num_steps": 30,
            "cos_min_ratio": 0.01, "warmup_type": "linear",
        }},
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": False},
        "steps_per_print": 1000000000,
        "wall_clock_breakdown": False,
    }
    for warmup, max_steps in [(0, 1), (0, 5), (1, 2), (7, 8), (49, 50)]:
        cfg = _cfg(optimizer={"warmup_steps": warmup}, trainer={"max_steps": max_steps})
        assert warmup_steps(cfg) == max(1, warmup)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
@pytest.mark.parametrize(("warmup", "max_steps", "capped"), [(50, 6, 5), (6, 6, 5), (50, 2, 1),
                                                             (50, 1, 1)])
def test_a_warm_up_as_long_as_the_run_is_capped(
    schedule: str, warmup: int, max_steps: int, capped: int
) -> None:
    cfg = _cfg(optimizer={"warmup_steps": warmup, "schedule": schedule},
               trainer={"max_steps": max_steps})
    scheduler = build_deepspeed_config(cfg, world_size=1)["scheduler"]
    assert scheduler["params"]["warmup_num_steps"] == capped
    # DeepSpeed's own scheduler accepts it and gives a finite LR in [0, lr] at every step.
    from deepspeed.runtime import lr_schedules

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    lr_scheduler = getattr(lr_schedules, scheduler["type"])(optimizer, **scheduler["params"])
    for _ in range(max_steps):
        lr = optimizer.param_groups[0]["lr"]
        assert math.isfinite(lr) and 0.0 <= lr <= 0.1
        optimizer.step()
        lr_scheduler.step()


def test_sgd_is_sgd_with_its_momentum() -> None:
    cfg = _cfg(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.8, "weight_decay": 0.0})
    ds = build_deepspeed_config(cfg, world_size=1)
    assert ds["optimizer"] == {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.8,
                                                         "weight_decay": 0.0}}
    # DeepSpeed builds torch's optimiser of that name.
    assert getattr(torch.optim, ds["optimizer"]["type"]) is torch.optim.SGD


SHM_PROBE = """
import os, socket
import deepspeed
import deepspeed.comm.comm as ds_comm
from dist_contrast.train.deepspeed_config import skip_shm_comm_op

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
skip_shm_comm_op()
deepspeed.init_distributed(dist_backend="gloo")
print("op", ds_comm.cdb.shm_comm_op)
"""


def test_deepspeed_starts_on_cpu_without_building_its_shared_memory_op(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(extensions)}
    proc = subprocess.run([sys.executable, "-c", SHM_PROBE], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "op None" in proc.stdout
    assert not (extensions / SHM_COMM_OP).exists()  # nothing compiled
