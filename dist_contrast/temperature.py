"""The temperature τ as a small module: fixed, cosine-scheduled, or learnable (log-parameterised).

The trainer builds it from config with plain arguments and passes ``temperature(step)`` (a 0-dim
tensor) to the loss; a learnable τ then receives its gradient through the loss.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

Mode = Literal["fixed", "cosine", "learnable"]


class Temperature(nn.Module):
    """τ, one of three kinds.

    - ``fixed``: always ``initial``.
    - ``cosine``: from ``initial`` at step 0 to ``final`` at step ``steps`` along a half cosine,
      then constant at ``final``.
    - ``learnable``: ``exp(log_tau)`` with ``log_tau`` a parameter started at ``log(initial)``,
      clamped to ``[min_value, max_value]`` like CLIP's logit scale (CLIP: τ ≥ 0.01); outside the
      clamp the gradient is zero, so τ cannot run away.

    ``forward(step)`` / ``value(step)`` return a 0-dim float32 tensor; the trainer passes its
    step counter, which its own checkpoint carries.
    """

    def __init__(
        self,
        initial: float = 0.07,
        *,
        mode: Mode = "fixed",
        final: float | None = None,
        steps: int | None = None,
        min_value: float = 0.01,
        max_value: float = 1.0,
    ) -> None:
        super().__init__()
        if initial <= 0:
            raise ValueError(f"temperature must be positive, got initial={initial}")
        if mode == "cosine" and (final is None or final <= 0 or steps is None or steps < 1):
            raise ValueError("a cosine temperature needs final > 0 and steps ≥ 1")
        if mode == "learnable" and not 0 < min_value <= initial <= max_value:
            raise ValueError(
                f"a learnable temperature needs 0 < min_value ≤ initial ≤ max_value, got "
                f"{min_value}, {initial}, {max_value}"
            )
        if mode not in ("fixed", "cosine", "learnable"):
            raise ValueError(f"mode must be 'fixed', 'cosine' or 'learnable', got {mode!r}")
        self.mode = mode
        self.initial = float(initial)
        self.final = float(final) if final is not None else float(initial)
        self.steps = int(steps) if steps is not None else 0
        self.min_value, self.max_value = float(min_value), float(max_value)
        # Shape [1], not 0-dim: DeepSpeed broadcasts parameters as byte views, which a 0-dim
        # tensor cannot give.
        self.log_tau = nn.Parameter(
            torch.tensor([math.log(initial)], dtype=torch.float32),
            requires_grad=mode == "learnable",
        )

    def value(self, step: int = 0) -> Tensor:
        """τ at training step ``step`` as a 0-dim float32 tensor.

        Shape:
            Returns [] (0-dim).
        """
        if self.mode == "learnable":
            low, high = math.log(self.min_value), math.log(self.max_value)
            return self.log_tau.clamp(low, high).exp().squeeze(0)
        if self.mode == "fixed":
            return self.log_tau.detach().exp().squeeze(0)
        progress = min(max(int(step), 0), self.steps) / self.steps
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        tau = self.final + (self.initial - self.final) * cosine
        return torch.tensor(tau, dtype=torch.float32, device=self.log_tau.device)

    def forward(self, step: int = 0) -> Tensor:
        return self.value(step)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the step counter moved to the trainer hold an unused,
        # always-zero ``step`` buffer: drop it so they still load strictly.
        state_dict.pop(prefix + "step", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, initial={self.initial}, final={self.final}, steps={self.steps}"
