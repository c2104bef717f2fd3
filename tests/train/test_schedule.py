"""The LR schedule: DeepSpeed's warm-up + cosine exactly, continuous across a longer resume."""

from __future__ import annotations

import math

import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupCosineLR

from dist_contrast.train.schedule import ResumableCosineLR

PARAMS = {"total_num_steps": 20, "warmup_min_ratio": 0.0, "warmup_num_steps": 5,
          "cos_min_ratio": 0.01, "warmup_type": "linear"}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def _lrs(scheduler: WarmupCosineLR, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        scheduler.step()
        out.append(scheduler.get_last_lr()[0])
    return out


def test_unchanged_it_is_deepspeeds_schedule_bit_for_bit() -> None:
    ours = _lrs(ResumableCosineLR(_optimizer(), **PARAMS), 25)
    theirs = _lrs(WarmupCosineLR(_optimizer(), **PARAMS), 25)
    assert ours == theirs


def test_a_resume_with_the_same_length_continues_exactly() -> None:
    first = ResumableCosineLR(_optimizer(), **PARAMS)
    _lrs(first, 12)
    resumed = ResumableCosineLR(_optimizer(), **PARAMS)
    resumed.load_state_dict(first.state_dict())
    assert _lrs(resumed, 8) == _lrs(first, 8)


@pytest.mark.parametrize("stop", [12, 20])
def test_a_longer_resume_continues_from_the_current_lr(stop: int) -> None:
    first = ResumableCosineLR(_optimizer(), **PARAMS)
    before = _lrs(first, stop)[-1]
    longer = ResumableCosineLR(_optimizer(), **{**PARAMS, "total_num_steps": 40})
    longer.load_state_dict(first.state_dict())
    after = _lrs(longer, 40 - stop)
    # The first step after the resume is one cosine step below where the old run stood...
    span = 40 - stop
    expected = 1e-3 * (0.01 + (before / 1e-3 - 0.01) * (1 + math.cos(math.pi / span)) / 2)
    assert after[0] == pytest.approx(expected)
    assert abs(after[0] - before) <= 0.05 * 1e-3
    # ...and it decays without a jump to the floor at the new end.
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:], strict=False))
    assert after[-1] == pytest.approx(1e-3 * 0.01)
    # A DeepSpeed schedule simply lengthened would have jumped.
    jumped = WarmupCosineLR(_optimizer(), **{**PARAMS, "total_num_steps": 40})
    jumped.load_state_dict(first.state_dict())
    assert _lrs(jumped, 1)[0] - before > 0.1 * 1e-3


def test_a_resume_within_the_warm_up_keeps_the_warm_up() -> None:
    first = ResumableCosineLR(_optimizer(), **PARAMS)
    _lrs(first, 3)
    longer = ResumableCosineLR(_optimizer(), **{**PARAMS, "total_num_steps": 40})
    longer.load_state_dict(first.state_dict())
    fresh = ResumableCosineLR(_optimizer(), **{**PARAMS, "total_num_steps": 40})
    _lrs(fresh, 3)
    assert _lrs(longer, 10) == _lrs(fresh, 10)
