"""A trained encoder outside training: loading one from a checkpoint folder or MLflow,
``dist-contrast embed`` and ``dist-contrast evaluate``. The model format the trainer logs lives
in :mod:`dist_contrast.train.model` and is re-exported here."""

from dist_contrast.serving.load import LoadedEncoder, load_encoder
from dist_contrast.train.model import (
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
