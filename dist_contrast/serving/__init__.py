"""A trained encoder outside training: the MLflow model the trainer logs, loading an encoder
from a checkpoint folder or MLflow, and ``dist-contrast embed``."""

from dist_contrast.serving.load import LoadedEncoder, load_encoder
from dist_contrast.serving.model import (
    MODEL_NAME,
    OUTPUTS,
    EncoderModule,
    TrainedEncoder,
    log_encoder,
)

__all__ = [
    "MODEL_NAME",
    "OUTPUTS",
    "EncoderModule",
    "LoadedEncoder",
    "TrainedEncoder",
    "load_encoder",
    "log_encoder",
]
