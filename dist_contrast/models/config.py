"""The ``model:`` section of an experiment config."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from dist_contrast.section import Section

ModelName = Literal["mlp", "cnn"]


class ModelConfig(Section):
    """Encoder architecture: a backbone (MLP or CNN) and a projection head.

    ``forward`` returns L2-normalised ``embedding_dim`` vectors (what the losses compare);
    ``encode`` returns the ``hidden_dim`` backbone features (what evaluation probes).
    A CNN needs image inputs [C, H, W] (data.name="digits"); ``build_model`` checks the shape.
    """

    name: ModelName = "mlp"
    hidden_dim: int = Field(default=256, gt=0, description="backbone width and feature size")
    num_layers: int = Field(
        default=3, gt=0, le=16, description="MLP: linear layers; CNN: conv blocks"
    )
    cnn_channels: int = Field(default=32, gt=0, description="CNN: channels of the first block")
    embedding_dim: int = Field(default=128, gt=0, description="output (projection) dimension")
    projection_layers: int = Field(
        default=2, gt=0, le=8, description="linear layers in the head; 1 = a linear map"
    )
    projection_hidden_dim: int | None = Field(
        default=None, gt=0, description="head width; None = hidden_dim"
    )
    batch_norm: bool = Field(
        default=False, description="BatchNorm after hidden layers (makes MoCo's shuffle-BN matter)"
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout after hidden layers")

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        # Only a non-default value is a mistake: a resolved config spells out every field.
        default_channels = type(self).model_fields["cnn_channels"].default
        if self.cnn_channels != default_channels and self.name != "cnn":
            raise ValueError("model.cnn_channels applies only to model.name='cnn'")
        if self.projection_hidden_dim is not None and self.projection_layers == 1:
            raise ValueError(
                "model.projection_hidden_dim needs model.projection_layers >= 2 "
                "(a 1-layer head has no hidden layer)"
            )
        return self
