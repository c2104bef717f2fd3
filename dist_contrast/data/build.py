"""Turn a ``DataConfig`` into training views and evaluation splits, through the dataset that
``data.name`` names in the registry (:mod:`dist_contrast.data.registry`); the built-in
datasets (synthetic, digits, file) are declared and registered at the end of this module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dist_contrast.data.augment import FeatureAugment, ImageAugment
from dist_contrast.data.config import DataConfig
from dist_contrast.data.dataset import Augment, ContrastiveDataset, TensorSource
from dist_contrast.data.errors import DataError, check_suffix
from dist_contrast.data.files import FeatureFile, describe_features, load_features
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.data.registry import (
    Dataset,
    DataShape,
    Provenance,
    get_dataset,
    register_dataset,
)
from dist_contrast.data.seeding import mix_seed
from dist_contrast.data.synthetic import SyntheticSource

if TYPE_CHECKING:
    from dist_contrast.data.textpairs import RetrievalSplit

_SPLIT_STREAM, _EVAL_STREAM = 0x53504C54, 0x4556414C  # "SPLT", "EVAL"
# Fewest rows a file may have: a few to train on and a few held out to evaluate.
MIN_FILE_ROWS = 10
# Raw training rows kept as the MLflow model's input example: at least 2, so that the exported
# model's batch dimension stays dynamic (torch.export fixes a dimension of size 1).
EXAMPLE_ROWS = 3


@dataclass(frozen=True)
class DataBundle:
    """Everything the trainer and the evaluator need from the data.

    ``eval_train`` is the kNN memory (un-augmented training rows), ``eval_test`` the held-out
    rows (never in ``train``). Labels are None when the data has none. ``preprocessing`` turns
    raw rows (as the file holds them) into what the encoder was trained on; ``raw_example``
    is a few raw training rows.

    Shape: eval features [N, *input_shape] float32, eval labels [N] int64;
    raw_example [EXAMPLE_ROWS, *preprocessing.raw_shape] float32.
    """

    train: ContrastiveDataset
    eval_train: tuple[Tensor, Tensor | None]
    eval_test: tuple[Tensor, Tensor | None]
    input_shape: tuple[int, ...]
    num_classes: int | None
    preprocessing: Preprocessing
    raw_example: Tensor
    # Text pairs: the held-out queries against their corpus (then eval_* are empty).
    retrieval: RetrievalSplit | None = None


def build_data(
    cfg: DataConfig, seed: int = 0, preprocessing: Preprocessing | None = None, *,
    rank: int = 0, world_size: int = 1,
) -> DataBundle:
    """Build the dataset named by ``cfg``; ``cfg.seed`` (when set) overrides ``seed``.

    ``preprocessing`` (a trained encoder's) replaces the statistics a dataset computes from
    its own training split, so that new data is evaluated the way the encoder was trained;
    datasets with a fixed preprocessing ignore it. ``rank``/``world_size``: the worker asking,
    for a dataset whose workers read only their own shard (others build the whole data).
    Raises ``DataError`` (one line: file, problem, fix) for unusable user data.
    """
    dataset = get_dataset(cfg.name)
    if world_size > 1 and dataset.build_shard is not None:
        return dataset.build_shard(cfg, _data_seed(cfg, seed), rank, world_size)
    return dataset.build(cfg, _data_seed(cfg, seed), preprocessing)


def validate_data(cfg: DataConfig, seed: int = 0) -> DataShape | None:
    """The training rows and input shape of a dataset that checks its rows without holding
    them (every row read; ``DataError`` at the first mistake); None for the others, which
    the driver builds instead."""
    dataset = get_dataset(cfg.name)
    return None if dataset.validate is None else dataset.validate(cfg, _data_seed(cfg, seed))


def training_shape(cfg: DataConfig) -> tuple[int, tuple[int, ...]]:
    """The training rows and input shape ``build_data`` will give, from the config or a
    file's header: no row is read. Raises ``DataError`` as ``build_data`` would."""
    shape = get_dataset(cfg.name).shape(cfg)
    return shape.rows - held_out_rows(cfg, shape.rows), tuple(shape.input_shape)


def provenance(cfg: DataConfig, seed: int = 0) -> Provenance:
    """Where the rows of ``cfg``'s dataset come from (the run's MLflow dataset)."""
    return get_dataset(cfg.name).provenance(cfg, _data_seed(cfg, seed))


def _data_seed(cfg: DataConfig, seed: int) -> int:
    return cfg.seed if cfg.seed is not None else seed


def held_out_rows(cfg: DataConfig, num_rows: int, path: str | None = None) -> int:
    """Rows held out for evaluation (``data.num_test`` or ``data.test_fraction``), at least 1;
    a ``DataError`` when fewer than 2 would be left to train on."""
    num_test = cfg.num_test if cfg.num_test is not None else round(cfg.test_fraction * num_rows)
    num_test = max(1, num_test)
    if num_rows - num_test < 2:
        raise DataError(
            path,
            f"data.name={cfg.name} has {num_rows} rows, too few to hold out {num_test} for "
            "testing",
            "lower data.num_test / data.test_fraction or use more rows",
        )
    return num_test


def tensor_bundle(
    cfg: DataConfig,
    seed: int,
    raw: Tensor,
    labels: Tensor | None,
    augment: Augment,
    preprocessing: Preprocessing | None = None,
) -> DataBundle:
    """A dataset held in memory as a bundle: ``raw`` rows (as a user would give them to
    ``embed``) split into training and held-out rows, each put through ``preprocessing``
    (default: none), views made by ``augment`` from the preprocessed training rows.

    Shape: raw [N, *preprocessing.raw_shape], labels [N] int64 (classes 0..K-1) or None.
    """
    preprocessing = preprocessing or Preprocessing.identity(tuple(raw.shape[1:]))
    train, test = _split_tensors(cfg, seed, raw.float(), labels)
    train_inputs = preprocessing.apply(train[0])
    test_inputs = preprocessing.apply(test[0])
    num_classes = None if labels is None else int(labels.max()) + 1
    return DataBundle(
        train=ContrastiveDataset(TensorSource(train_inputs, train[1], augment), seed),
        eval_train=_eval_split((train_inputs, train[1]), cfg.max_eval_train, seed, 0),
        eval_test=_eval_split((test_inputs, test[1]), cfg.max_eval_test, seed, 1),
        input_shape=tuple(preprocessing.input_shape),
        num_classes=num_classes,
        preprocessing=preprocessing,
        raw_example=train[0][:EXAMPLE_ROWS],
    )


def _subset(num_rows: int, limit: int | None, seed: int, stream: int) -> Tensor:
    """Sorted seeded subset of ``range(num_rows)`` of size ``min(num_rows, limit)``."""
    if limit is None or num_rows <= limit:
        return torch.arange(num_rows)
    rng = torch.Generator().manual_seed(mix_seed(seed, _EVAL_STREAM, stream))
    return torch.randperm(num_rows, generator=rng)[:limit].sort().values


def _build_synthetic(cfg: DataConfig, seed: int) -> DataBundle:
    num_test = held_out_rows(cfg, cfg.num_samples)
    num_train = cfg.num_samples - num_test

    def source(size: int, first_id: int) -> SyntheticSource:
        return SyntheticSource(
            seed=seed,
            size=size,
            first_id=first_id,
            num_classes=cfg.num_classes,
            dim=cfg.dim,
            signal_dim=cfg.signal_dim,
            within_class_scale=cfg.within_class_scale,
            nuisance_scale=cfg.nuisance_scale,
            noise_scale=cfg.noise_scale,
        )

    # Train and test are disjoint id ranges of one generator: same classes, new instances.
    train, test = source(num_train, 0), source(num_test, num_train)
    train_ids = _subset(num_train, cfg.max_eval_train, seed, 0)
    test_ids = _subset(num_test, cfg.max_eval_test, seed, 1)
    return DataBundle(
        train=ContrastiveDataset(train, seed),
        eval_train=(train.clean(train_ids), train.labels(train_ids)),
        eval_test=(test.clean(test_ids), test.labels(test_ids)),
        input_shape=train.input_shape,
        num_classes=cfg.num_classes,
        preprocessing=Preprocessing.identity(train.input_shape),
        raw_example=train.clean(torch.arange(min(EXAMPLE_ROWS, num_train))),
    )


def _split_tensors(
    cfg: DataConfig, seed: int, features: Tensor, labels: Tensor | None,
    path: str | None = None,
) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
    num_rows = features.shape[0]
    num_test = held_out_rows(cfg, num_rows, path)
    rng = torch.Generator().manual_seed(mix_seed(seed, _SPLIT_STREAM))
    order = torch.randperm(num_rows, generator=rng)
    # Sorted so that dataset ids follow file order: easier to map back to the user's rows.
    test_rows, train_rows = order[:num_test].sort().values, order[num_test:].sort().values

    def take(rows: Tensor) -> tuple[Tensor, Tensor | None]:
        return features[rows], None if labels is None else labels[rows]

    return take(train_rows), take(test_rows)


def _eval_split(
    split: tuple[Tensor, Tensor | None], limit: int | None, seed: int, stream: int
) -> tuple[Tensor, Tensor | None]:
    rows = _subset(split[0].shape[0], limit, seed, stream)
    if len(rows) == split[0].shape[0]:
        return split
    return split[0][rows], None if split[1] is None else split[1][rows]


def _build_digits(cfg: DataConfig, seed: int, _: Preprocessing | None = None) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8×8 images, values 0..16, bundled with scikit-learn (no download) -> [N, 1, 8, 8] in [0, 1].
    # Raw rows are scikit-learn's flat ``digits.data`` rows [64]; the division is exact.
    preprocessing = Preprocessing.scale(16.0, raw_shape=(64,), input_shape=DIGITS_SHAPE)
    aug = cfg.augment
    augment = ImageAugment(aug.max_shift, aug.max_rotation_deg, aug.noise_std, aug.erase_prob)
    return tensor_bundle(cfg, seed, torch.from_numpy(digits.data).float(),
                         torch.from_numpy(digits.target).long(), augment, preprocessing)


def _build_file(cfg: DataConfig, seed: int, given: Preprocessing | None = None) -> DataBundle:
    _file_shape(cfg)  # the header's checks (rows, width) before any row is read
    assert cfg.path is not None  # the config validator guarantees it for name="file"
    array, label_array = load_features(
        cfg.path,
        labels_path=cfg.labels_path,
        label_column=cfg.label_column,
        feature_columns=cfg.feature_columns,
    )
    features = torch.from_numpy(array)
    labels = None if label_array is None else torch.from_numpy(label_array)
    train, test = _split_tensors(cfg, seed, features, labels, cfg.path)
    raw_example = train[0][:EXAMPLE_ROWS]
    preprocessing = Preprocessing.identity(tuple(features.shape[1:]))
    if given is not None:
        if given.raw_width != features[0].numel():
            raise DataError(cfg.path, f"rows have {features[0].numel()} values, the encoder "
                            f"takes {given.raw_width}", "give data with the training columns")
        preprocessing = given
    elif cfg.standardize:
        # Train-split statistics only, so nothing about the held-out rows leaks into training.
        mean = train[0].mean(dim=0)
        std = train[0].std(dim=0).clamp_min(1e-6)
        preprocessing = Preprocessing.standardize(mean, std)
    if given is not None or cfg.standardize:
        train = (preprocessing.apply(train[0]), train[1])
        test = (preprocessing.apply(test[0]), test[1])
    augment = FeatureAugment(cfg.augment.noise_std, cfg.augment.feature_dropout)
    num_classes = None if label_array is None else int(label_array.max()) + 1
    return DataBundle(
        train=ContrastiveDataset(TensorSource(train[0], train[1], augment), seed),
        eval_train=_eval_split(train, cfg.max_eval_train, seed, 0),
        eval_test=_eval_split(test, cfg.max_eval_test, seed, 1),
        input_shape=tuple(features.shape[1:]),
        num_classes=num_classes,
        preprocessing=preprocessing,
        raw_example=raw_example,
    )


# ----------------------------------------------------------------------------- the built-ins

DIGITS_ROWS = 1797  # scikit-learn's bundled 8×8 digits
DIGITS_SHAPE = (1, 8, 8)
_SPLIT_KEYS = ("num_test", "test_fraction")
_SYNTHETIC_SETTINGS = ("num_samples", "num_classes", "dim", "signal_dim", "within_class_scale",
                       "nuisance_scale", "noise_scale")
_FILE_SETTINGS = ("path", "labels_path", "label_column", "feature_columns", "standardize")


def _split(cfg: DataConfig) -> dict[str, object]:
    """The held-out split's setting: it decides which rows are training rows."""
    if cfg.num_test is not None:
        return {"num_test": cfg.num_test}
    return {"test_fraction": cfg.test_fraction}


def _check_synthetic(cfg: DataConfig) -> None:
    if cfg.signal_dim >= cfg.dim:
        raise ValueError(
            f"data.signal_dim={cfg.signal_dim} must be below data.dim={cfg.dim} "
            "(the rest of the dimensions carry the nuisance)"
        )


def _synthetic_provenance(cfg: DataConfig, seed: int) -> Provenance:
    settings = {key: getattr(cfg, key) for key in _SYNTHETIC_SETTINGS}
    return Provenance(generator={
        "generator": "dist_contrast.data.synthetic (latent classes + nuisance)",
        "seed": seed, **settings, **_split(cfg)})


def _digits_provenance(cfg: DataConfig, seed: int) -> Provenance:
    return Provenance(generator={"generator": "sklearn.datasets.load_digits (1,797 8×8 images)",
                                 "seed": seed, **_split(cfg)})


def _check_file(cfg: DataConfig) -> None:
    if cfg.path is None:
        raise ValueError("data.name='file' needs data.path (a .npy or .parquet file)")
    suffix = check_suffix(cfg.path)
    if suffix == ".npy" and (cfg.label_column or cfg.feature_columns):
        raise ValueError("data.label_column/feature_columns are for .parquet; use data.labels_path")
    if suffix == ".parquet" and cfg.labels_path is not None:
        raise ValueError("data.labels_path is for .npy features; use data.label_column")


def _file_shape(cfg: DataConfig) -> DataShape:
    """Rows and width from the file's header or metadata; too few rows refused here."""
    assert cfg.path is not None  # the config validator guarantees it for name="file"
    source: FeatureFile = describe_features(
        cfg.path, labels_path=cfg.labels_path, label_column=cfg.label_column,
        feature_columns=cfg.feature_columns,
    )
    if source.num_rows < MIN_FILE_ROWS:
        raise DataError(
            cfg.path,
            f"only {source.num_rows} rows, need at least {MIN_FILE_ROWS}",
            "add rows (some are held out for evaluation)",
        )
    return DataShape(source.num_rows, source.row_shape)


def _file_provenance(cfg: DataConfig, seed: int) -> Provenance:
    assert cfg.path is not None  # the config validator guarantees it for name="file"
    files = [cfg.path, *([cfg.labels_path] if cfg.labels_path else [])]
    return Provenance(files=tuple(str(Path(file)) for file in files),
                      label_column=cfg.label_column)


register_dataset("synthetic", Dataset(
    build=lambda cfg, seed, _: _build_synthetic(cfg, seed),
    shape=lambda cfg: DataShape(cfg.num_samples, (cfg.dim,)),
    provenance=_synthetic_provenance,
    fields=frozenset(_SYNTHETIC_SETTINGS),
    check=_check_synthetic,
    in_memory=False,
))
register_dataset("digits", Dataset(
    build=_build_digits,
    shape=lambda cfg: DataShape(DIGITS_ROWS, DIGITS_SHAPE),
    provenance=_digits_provenance,
    images=True,
))
register_dataset("file", Dataset(
    build=_build_file,
    shape=_file_shape,
    provenance=_file_provenance,
    fields=frozenset(_FILE_SETTINGS),
    check=_check_file,
))

# The text pairs register themselves (a module of their own: dist_contrast.data.textpairs).
from dist_contrast.data import textpairs as _textpairs  # noqa: E402, F401
