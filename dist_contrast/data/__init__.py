"""Datasets that yield two augmented views per item, their shards, and evaluation splits.

Each dataset is declared once in the registry (:mod:`dist_contrast.data.registry`):
``data.name`` picks it, and :func:`register_dataset` adds one.
"""

from dist_contrast.data.augment import FeatureAugment, ImageAugment
from dist_contrast.data.build import (
    DataBundle,
    build_data,
    held_out_rows,
    provenance,
    tensor_bundle,
    training_shape,
    validate_data,
)
from dist_contrast.data.config import AugmentConfig, DataConfig
from dist_contrast.data.dataset import ContrastiveDataset, TensorSource, ViewSource
from dist_contrast.data.errors import DataError
from dist_contrast.data.files import FeatureFile, load_features, open_features
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.data.registry import (
    Dataset,
    DataShape,
    Provenance,
    dataset_names,
    get_dataset,
    register_dataset,
)
from dist_contrast.data.sharding import ShardSampler, epoch_permutation, make_loader
from dist_contrast.data.synthetic import SyntheticSource

__all__ = [
    "AugmentConfig",
    "ContrastiveDataset",
    "DataBundle",
    "DataConfig",
    "DataError",
    "DataShape",
    "Dataset",
    "FeatureAugment",
    "FeatureFile",
    "ImageAugment",
    "Preprocessing",
    "Provenance",
    "ShardSampler",
    "SyntheticSource",
    "TensorSource",
    "ViewSource",
    "build_data",
    "dataset_names",
    "epoch_permutation",
    "get_dataset",
    "held_out_rows",
    "load_features",
    "make_loader",
    "open_features",
    "provenance",
    "register_dataset",
    "tensor_bundle",
    "training_shape",
    "validate_data",
]
