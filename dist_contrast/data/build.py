"""Turn a ``DataConfig`` into training views and evaluation splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dist_contrast.data.augment import FeatureAugment, ImageAugment
from dist_contrast.data.config import DataConfig
from dist_contrast.data.dataset import ContrastiveDataset, TensorSource
from dist_contrast.data.errors import DataError
from dist_contrast.data.files import load_features
from dist_contrast.data.preprocess import Preprocessing
from dist_contrast.data.seeding import mix_seed
from dist_contrast.data.synthetic import SyntheticSource

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


def build_data(
    cfg: DataConfig, seed: int = 0, preprocessing: Preprocessing | None = None
) -> DataBundle:
    """Build the dataset named by ``cfg``; ``cfg.seed`` (when set) overrides ``seed``.

    ``preprocessing`` (file data only) replaces the statistics of the file's own training split
    with a trained encoder's, so that new data is evaluated the way the encoder was trained.
    Raises ``DataError`` (one line: file, problem, fix) for unusable user data.
    """
    data_seed = cfg.seed if cfg.seed is not None else seed
    if cfg.name == "synthetic":
        return _build_synthetic(cfg, data_seed)
    if cfg.name == "digits":
        return _build_digits(cfg, data_seed)
    return _build_file(cfg, data_seed, preprocessing)


def _num_test(cfg: DataConfig, num_rows: int, what: str) -> int:
    num_test = cfg.num_test if cfg.num_test is not None else round(cfg.test_fraction * num_rows)
    num_test = max(1, num_test)
    if num_rows - num_test < 2:
        raise DataError(
            cfg.path if cfg.name == "file" else None,
            f"{what} has {num_rows} rows, too few to hold out {num_test} for testing",
            "lower data.num_test / data.test_fraction or use more rows",
        )
    return num_test


def _subset(num_rows: int, limit: int | None, seed: int, stream: int) -> Tensor:
    """Sorted seeded subset of ``range(num_rows)`` of size ``min(num_rows, limit)``."""
    if limit is None or num_rows <= limit:
        return torch.arange(num_rows)
    rng = torch.Generator().manual_seed(mix_seed(seed, _EVAL_STREAM, stream))
    return torch.randperm(num_rows, generator=rng)[:limit].sort().values


def _build_synthetic(cfg: DataConfig, seed: int) -> DataBundle:
    num_test = _num_test(cfg, cfg.num_samples, "data.num_samples")
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
    cfg: DataConfig, seed: int, features: Tensor, labels: Tensor | None, what: str
) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
    num_rows = features.shape[0]
    num_test = _num_test(cfg, num_rows, what)
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


def _build_digits(cfg: DataConfig, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8×8 images, values 0..16, bundled with scikit-learn (no download) -> [N, 1, 8, 8] in [0, 1].
    # Raw rows are scikit-learn's flat ``digits.data`` rows [64]; the division is exact.
    preprocessing = Preprocessing.scale(16.0, raw_shape=(64,), input_shape=(1, 8, 8))
    images = preprocessing.apply(digits.data)
    labels = torch.from_numpy(digits.target).long()
    train, test = _split_tensors(cfg, seed, images, labels, "digits")
    aug = cfg.augment
    augment = ImageAugment(aug.max_shift, aug.max_rotation_deg, aug.noise_std, aug.erase_prob)
    return DataBundle(
        train=ContrastiveDataset(TensorSource(train[0], train[1], augment), seed),
        eval_train=_eval_split(train, cfg.max_eval_train, seed, 0),
        eval_test=_eval_split(test, cfg.max_eval_test, seed, 1),
        input_shape=tuple(images.shape[1:]),
        num_classes=10,
        preprocessing=preprocessing,
        raw_example=train[0][:EXAMPLE_ROWS].reshape(-1, 64) * 16.0,
    )


def _build_file(cfg: DataConfig, seed: int, given: Preprocessing | None = None) -> DataBundle:
    assert cfg.path is not None  # the config validator guarantees it for name="file"
    array, label_array = load_features(
        cfg.path,
        labels_path=cfg.labels_path,
        label_column=cfg.label_column,
        feature_columns=cfg.feature_columns,
    )
    if len(array) < MIN_FILE_ROWS:
        raise DataError(
            cfg.path,
            f"only {len(array)} rows, need at least {MIN_FILE_ROWS}",
            "add rows (some are held out for evaluation)",
        )
    features = torch.from_numpy(array)
    labels = None if label_array is None else torch.from_numpy(label_array)
    train, test = _split_tensors(cfg, seed, features, labels, "the file")
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
