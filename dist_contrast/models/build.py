"""Build the encoder named by a ``ModelConfig`` for a given input shape."""

from __future__ import annotations

from torch import nn

from dist_contrast.models.config import ModelConfig
from dist_contrast.models.encoders import (
    CNNBackbone,
    ContrastiveEncoder,
    MLPBackbone,
    ProjectionHead,
)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...]) -> ContrastiveEncoder:
    """An encoder whose ``forward`` maps inputs to unit-norm ``embedding_dim`` vectors.

    The MLP flattens any input shape; the CNN needs images ``(C, H, W)``.

    Shape: forward [B, *input_shape] -> [B, cfg.embedding_dim].
    """
    input_shape = tuple(int(size) for size in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"input_shape must be non-empty and positive, got {input_shape}")
    backbone: nn.Module
    if cfg.name == "cnn":
        if len(input_shape) != 3:
            raise ValueError(
                f"model.name='cnn' needs image inputs (C, H, W), got input_shape={input_shape}; "
                "use data.name='digits' or model.name='mlp'"
            )
        backbone = CNNBackbone(
            input_shape,
            cfg.cnn_channels,
            cfg.hidden_dim,
            cfg.num_layers,
            cfg.batch_norm,
            cfg.dropout,
        )
    else:
        backbone = MLPBackbone(
            input_shape, cfg.hidden_dim, cfg.num_layers, cfg.batch_norm, cfg.dropout
        )
    head = ProjectionHead(
        in_dim=cfg.hidden_dim,
        hidden_dim=cfg.projection_hidden_dim or cfg.hidden_dim,
        out_dim=cfg.embedding_dim,
        num_layers=cfg.projection_layers,
        batch_norm=cfg.batch_norm,
    )
    return ContrastiveEncoder(backbone, head, cfg.hidden_dim, cfg.embedding_dim)
