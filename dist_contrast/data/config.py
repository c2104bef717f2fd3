"""The ``data:`` section of an experiment config."""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator

from dist_contrast.data.registry import all_fields, dataset_names, get_dataset
from dist_contrast.paths import OptionalConfigPath
from dist_contrast.section import Section


def dataset_keys(name: str) -> frozenset[str]:
    """The ``data.*`` keys that only ``data.name=name`` reads (e.g. ``num_samples``), and its
    ``params``."""
    return get_dataset(name).fields | {"params"}


class AugmentConfig(Section):
    """Strengths of the stochastic augmentations that make the two views.

    Digits use ``max_shift``, ``max_rotation_deg``, ``noise_std`` and ``erase_prob``; file
    data uses ``noise_std`` (in standard deviations when standardised) and
    ``feature_dropout``. Synthetic views are made by resampling the nuisance factors instead
    (``nuisance_scale``, ``noise_scale`` in ``DataConfig``).
    """

    max_shift: float = Field(default=1.0, ge=0, le=4, description="digits: max translation, pixels")
    max_rotation_deg: float = Field(default=12.0, ge=0, le=180, description="digits: max rotation")
    noise_std: float = Field(default=0.1, ge=0, description="additive gaussian noise std")
    erase_prob: float = Field(
        default=0.3, ge=0, le=1, description="digits: chance of erasing a patch"
    )
    feature_dropout: float = Field(
        default=0.1, ge=0, lt=1, description="file: chance each feature is zeroed in a view"
    )


class DataConfig(Section):
    """Which dataset to train on, how to split it, and how to augment it."""

    name: str = Field(default="synthetic", description="a registered dataset: synthetic, "
                      "digits, file, or one added with register_dataset")
    params: dict[str, Any] = Field(
        default_factory=dict, description="a registered dataset's own settings"
    )
    seed: int | None = Field(
        default=None, description="fixes data generation and splits; None uses the run seed"
    )
    test_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="held-out share for evaluation"
    )
    num_test: int | None = Field(
        default=None, gt=0, description="held-out rows; overrides the fraction"
    )
    max_eval_train: int | None = Field(
        default=50_000, gt=0, description="kNN memory rows: a seeded subset of train when larger"
    )
    max_eval_test: int | None = Field(
        default=50_000, gt=0, description="held-out rows evaluated: a seeded subset when larger"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    # file
    path: OptionalConfigPath = Field(default=None,
                                     description="features: .npy [N, D] or .parquet")
    labels_path: OptionalConfigPath = Field(
        default=None, description=".npy labels [N] for a .npy feature file"
    )
    label_column: str | None = Field(default=None, description="parquet column holding labels")
    # pairs (data.path is the training pairs)
    eval_path: OptionalConfigPath = Field(
        default=None, description="pairs: held-out pairs (default: rows held out of data.path)")
    feature_columns: tuple[str, ...] | None = Field(
        default=None, description="parquet feature columns; None = all but the label column"
    )
    standardize: bool = Field(
        default=True, description="z-score features with train-split statistics"
    )

    # synthetic
    num_samples: int = Field(
        default=20_000, gt=0, le=1_000_000_000, description="train + test rows"
    )
    num_classes: int = Field(default=10, ge=2, description="latent classes (evaluation only)")
    dim: int = Field(default=64, ge=2, description="input dimension")
    signal_dim: int = Field(default=8, gt=0, description="dimension of the class subspace")
    within_class_scale: float = Field(
        default=0.5,
        ge=0,
        description="spread of instances around their class mean (signal subspace)",
    )
    nuisance_scale: float = Field(
        default=5.0, ge=0, description="std of the nuisance factors each view resamples"
    )
    noise_scale: float = Field(default=0.1, ge=0, description="isotropic noise std, fresh per view")

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        dataset = get_dataset(self.name)  # an unknown name: one line with the choices
        for field in sorted(self.model_fields_set & all_fields() - dataset.fields):
            # A default value is harmless: a fully resolved config (e.g. the YAML that MLflow
            # logs) spells out every field and must load again.
            if getattr(self, field) != type(self).model_fields[field].default:
                owners = [name for name in dataset_names() if field in get_dataset(name).fields]
                raise ValueError(f"data.{field} applies only to data.name="
                                 f"{' or '.join(repr(name) for name in owners)}")
        unknown = sorted(set(self.params) - dataset.options)
        if unknown:
            allowed = ", ".join(sorted(dataset.options)) or "none"
            raise ValueError(f"data.params.{unknown[0]} is not a setting of data.name="
                             f"{self.name} (its settings: {allowed})")
        if dataset.check is not None:
            dataset.check(self)
        default_fraction = type(self).model_fields["test_fraction"].default
        if self.num_test is not None and self.test_fraction != default_fraction:
            # (A resolved config spells out the default fraction beside num_test: allowed.)
            raise ValueError("set data.num_test or data.test_fraction, not both")
        return self

    @property
    def yields_text(self) -> bool:
        """True when items are (query, document) texts (what the text encoders take)."""
        return get_dataset(self.name).text

    @property
    def yields_images(self) -> bool:
        """True when samples are images [C, H, W] (what a CNN encoder needs)."""
        return get_dataset(self.name).images
