"""Small helpers shared by the losses: temperature handling and input checks."""

from __future__ import annotations

import torch
from torch import Tensor

Temperature = float | Tensor


def temperature_tensor(temperature: Temperature, like: Tensor) -> Tensor:
    """τ as a 0-dim float32 tensor on ``like``'s device, keeping its autograd graph.

    A Python float becomes a constant; a tensor is only cast (``.float()`` is differentiable),
    so a learnable τ receives its gradient through every loss.
    """
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0:
            shape = tuple(temperature.shape)
            raise ValueError(f"temperature must be a 0-dim tensor, got shape {shape}")
        return temperature.to(compute_dtype(temperature))
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return torch.tensor(float(temperature), dtype=compute_dtype(like), device=like.device)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype logits are computed in: at least float32 (bf16/fp16 are upcast), float64 kept."""
    return torch.promote_types(x.dtype, torch.float32)


def check_2d(name: str, x: Tensor, dim: int | None = None) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` is [rows, dim]."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dim {x.shape[1]}, expected {dim} (same as query)")


def check_mask(name: str, mask: Tensor | None, shape: tuple[int, ...]) -> None:
    """Raise a one-line ``ValueError`` unless ``mask`` is None or a bool tensor of ``shape``."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = excluded), got {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")


def default_positive_index(query: Tensor, key: Tensor, positive_index: Tensor | None) -> Tensor:
    """Each query's positive row in ``key``; ``arange(B)`` by default (key i is query i's)."""
    batch = query.shape[0]
    if key.shape[0] < batch:
        raise ValueError(f"key must have at least as many rows as query ({key.shape[0]} < {batch})")
    if positive_index is None:
        return torch.arange(batch, device=query.device)
    if positive_index.shape != (batch,):
        shape = tuple(positive_index.shape)
        raise ValueError(f"positive_index must have shape ({batch},), got {shape}")
    return positive_index.long()
