"""Backbones, projection head, and the encoder that joins them."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def _hidden_block(in_dim: int, out_dim: int, batch_norm: bool, dropout: float) -> list[nn.Module]:
    # No bias before BatchNorm: its shift would be cancelled by the normalisation anyway.
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_dim))
    layers.append(nn.ReLU(inplace=True))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


class MLPBackbone(nn.Module):
    """Flatten, then ``num_layers`` × (Linear → [BatchNorm] → ReLU → [Dropout]).

    Shape: [B, *input_shape] -> [B, hidden_dim].
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        hidden_dim: int,
        num_layers: int,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(num_layers):
            layers += _hidden_block(width, hidden_dim, batch_norm, dropout)
            width = hidden_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CNNBackbone(nn.Module):
    """``num_layers`` conv blocks, global average pool, then Linear → ReLU to ``hidden_dim``.

    Channels double each block from ``channels``. A block halves the spatial size (stride 2)
    only while the map is at least 4 pixels on each side, so an 8×8 digit is never pooled
    below 2×2 whatever the depth, and larger images are still downsampled.

    Shape: [B, C, H, W] -> [B, hidden_dim].
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        channels: int,
        hidden_dim: int,
        num_layers: int,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for block in range(num_layers):
            out_channels = channels * 2**block
            stride = 2 if block > 0 and min(height, width) >= 4 else 1
            layers.append(
                nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
            height, width = (height + 1) // stride, (width + 1) // stride
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers += _hidden_block(in_channels, hidden_dim, batch_norm=False, dropout=dropout)
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """``num_layers - 1`` hidden blocks then a Linear to ``out_dim`` (no normalisation here).

    Shape: [B, in_dim] -> [B, out_dim].
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers - 1):
            layers += _hidden_block(width, hidden_dim, batch_norm, dropout=0.0)
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ContrastiveEncoder(nn.Module):
    """Backbone + projection head; ``forward`` gives unit-norm embeddings.

    The loss compares the head's normalised outputs; evaluation usually probes the backbone
    features (``encode``), which keep information the head learns to discard (SimCLR).
    ``forward`` knows nothing of distribution: no gathers, no queues.

    Shape: forward [B, *input_shape] -> [B, embedding_dim] (unit L2 norm rows);
    encode [B, *input_shape] -> [B, feature_dim].
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim

    def _as_param_dtype(self, x: Tensor) -> Tensor:
        # Loaders yield float32; casting here lets a bf16 model (DeepSpeed bf16) take them as is.
        # Under autocast the parameters stay float32, so this is a no-op there.
        return x.to(next(self.parameters()).dtype)

    def encode(self, x: Tensor) -> Tensor:
        """Backbone features before the head (not normalised)."""
        return self.backbone(self._as_param_dtype(x))

    def forward(self, x: Tensor, side: str = "query") -> Tensor:
        """``side`` is accepted for the text encoders' sake: one network embeds both sides
        here (the views of a row)."""
        projected = self.head(self.encode(x))
        # Normalise in float32: in bf16 the squared-norm sum loses digits, and the losses
        # rely on exactly unit-norm rows (cosine similarity = dot product).
        return F.normalize(projected.float(), dim=-1).to(projected.dtype)
