"""Datasets that yield two augmented views per item, their shards, and evaluation splits."""

from dist_contrast.data.build import DataBundle, build_data
from dist_contrast.data.config import AugmentConfig, DataConfig
from dist_contrast.data.dataset import ContrastiveDataset, TensorSource, ViewSource
from dist_contrast.data.errors import DataError
from dist_contrast.data.files import load_features
from dist_contrast.data.sharding import ShardSampler, epoch_permutation, make_loader
from dist_contrast.data.synthetic import SyntheticSource

__all__ = [
    "AugmentConfig",
    "ContrastiveDataset",
    "DataBundle",
    "DataConfig",
    "DataError",
    "ShardSampler",
    "SyntheticSource",
    "TensorSource",
    "ViewSource",
    "build_data",
    "epoch_permutation",
    "load_features",
    "make_loader",
]
