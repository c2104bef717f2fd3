"""MoCo's momentum (key) encoder: an exponential moving average of the query encoder."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """A frozen deep copy of the query encoder, updated by θ_k ← m·θ_k + (1 − m)·θ_q.

    ``update`` is called explicitly by the trainer after the optimiser step (never inside
    ``forward``). Buffers (BatchNorm running statistics) are copied, not averaged: MoCo's key
    encoder keeps its own running stats in train mode, and copying keeps the eval-mode key
    encoder consistent with the query encoder's statistics.
    """

    def __init__(self, query_encoder: nn.Module, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.encoder = copy.deepcopy(query_encoder)
        for param in self.encoder.parameters():
            param.requires_grad_(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Keys from the momentum encoder, without gradient."""
        with torch.no_grad():
            return self.encoder(*args, **kwargs)

    @torch.no_grad()
    def update(self, query_encoder: nn.Module) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q for parameters; buffers copied.

        Pass the module with full parameters (``engine.module`` under ZeRO 0–2).
        """
        key_params = dict(self.encoder.named_parameters())
        query_params = dict(query_encoder.named_parameters())
        if key_params.keys() != query_params.keys():
            raise ValueError("query encoder and momentum encoder have different parameters")
        for name, key_param in key_params.items():
            query_param = query_params[name].detach()
            if query_param.numel() == 0 and key_param.numel() > 0:
                raise ValueError(
                    f"query parameter '{name}' is empty (ZeRO stage 3 partitioned?); "
                    "the momentum encoder needs full parameters"
                )
            key_param.mul_(self.momentum).add_(
                query_param.to(key_param.dtype), alpha=1.0 - self.momentum
            )
        key_buffers = dict(self.encoder.named_buffers())
        for name, buffer in query_encoder.named_buffers():
            if name in key_buffers:
                key_buffers[name].copy_(buffer)
