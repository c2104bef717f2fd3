"""Temperature: fixed, cosine schedule, learnable with clamp; state dict round trip."""

from __future__ import annotations

import math

import pytest
import torch

from dist_contrast.losses import info_nce
from dist_contrast.temperature import Temperature


def test_fixed():
    tau = Temperature(0.2)
    assert tau().item() == pytest.approx(0.2)
    assert tau(1000).dim() == 0
    assert not any(p.requires_grad for p in tau.parameters())


def test_cosine_schedule_endpoints_middle_and_after():
    tau = Temperature(0.5, mode="cosine", final=0.1, steps=100)
    assert tau(0).item() == pytest.approx(0.5)
    assert tau(50).item() == pytest.approx(0.3)
    assert tau(25).item() == pytest.approx(0.1 + 0.4 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert tau(100).item() == pytest.approx(0.1)
    assert tau(10_000).item() == pytest.approx(0.1)


def test_learnable_gets_gradient_through_a_tiled_loss_and_is_clamped():
    tau = Temperature(0.07, mode="learnable", min_value=0.01, max_value=0.5)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    loss = info_nce(q, q.roll(1, 0), torch.randn(9, 8), temperature=tau(), tile_size=4)
    loss.backward()
    assert tau.log_tau.grad is not None and tau.log_tau.grad != 0
    with torch.no_grad():
        tau.log_tau.fill_(math.log(10.0))
    assert tau().item() == pytest.approx(0.5)


def test_state_dict_round_trips():
    source = Temperature(0.1, mode="learnable")
    with torch.no_grad():
        source.log_tau.fill_(math.log(0.2))
    target = Temperature(0.1, mode="learnable")
    target.load_state_dict(source.state_dict())
    assert target().item() == pytest.approx(0.2)


def test_checkpoints_with_the_old_step_buffer_still_load():
    legacy = {**Temperature(0.1).state_dict(), "step": torch.zeros(1, dtype=torch.long)}
    target = Temperature(0.1)
    target.load_state_dict(legacy)  # strict: the unused buffer is dropped, nothing else
    assert target().item() == pytest.approx(0.1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"initial": -1.0}, "positive"),
    ({"initial": 0.1, "mode": "cosine"}, "cosine"),
    ({"initial": 0.001, "mode": "learnable"}, "learnable"),
    ({"initial": 0.1, "mode": "bogus"}, "mode must be"),
])
def test_bad_arguments(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        Temperature(**kwargs)
