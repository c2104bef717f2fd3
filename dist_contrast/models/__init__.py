"""Encoders: an MLP or CNN backbone with a projection head, giving unit-norm embeddings."""

from dist_contrast.models.build import build_model
from dist_contrast.models.config import ModelConfig
from dist_contrast.models.encoders import (
    CNNBackbone,
    ContrastiveEncoder,
    MLPBackbone,
    ProjectionHead,
)

__all__ = [
    "CNNBackbone",
    "ContrastiveEncoder",
    "MLPBackbone",
    "ModelConfig",
    "ProjectionHead",
    "build_model",
]
