"""The ``data:`` section of an experiment config."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from dist_contrast.data.errors import check_suffix
from dist_contrast.section import Section

DatasetName = Literal["synthetic", "digits", "file"]

# Fields that only one dataset reads. Setting one of them for another dataset is almost
# certainly a mistake in the YAML (e.g. `dim` for digits), so it is rejected, not ignored.
_ONLY_FOR: dict[str, DatasetName] = {
    "path": "file",
    "labels_path": "file",
    "label_column": "file",
    "feature_columns": "file",
    "standardize": "file",
    "num_samples": "synthetic",
    "num_classes": "synthetic",
    "dim": "synthetic",
    "signal_dim": "synthetic",
    "within_class_scale": "synthetic",
    "nuisance_scale": "synthetic",
    "noise_scale": "synthetic",
}


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

    name: DatasetName = "synthetic"
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
    path: str | None = Field(default=None, description="features: .npy [N, D] or .parquet")
    labels_path: str | None = Field(
        default=None, description=".npy labels [N] for a .npy feature file"
    )
    label_column: str | None = Field(default=None, description="parquet column holding labels")
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
        for field in sorted(self.model_fields_set):
            owner = _ONLY_FOR.get(field)
            # A default value is harmless: a fully resolved config (e.g. the YAML that MLflow
            # logs) spells out every field and must load again.
            is_default = getattr(self, field) == type(self).model_fields[field].default
            if owner is not None and owner != self.name and not is_default:
                raise ValueError(f"data.{field} applies only to data.name={owner!r}")
        if self.name == "file":
            self._check_file_fields()
        if self.name == "synthetic" and self.signal_dim >= self.dim:
            raise ValueError(
                f"data.signal_dim={self.signal_dim} must be below data.dim={self.dim} "
                "(the rest of the dimensions carry the nuisance)"
            )
        default_fraction = type(self).model_fields["test_fraction"].default
        if self.num_test is not None and self.test_fraction != default_fraction:
            # (A resolved config spells out the default fraction beside num_test: allowed.)
            raise ValueError("set data.num_test or data.test_fraction, not both")
        return self

    def _check_file_fields(self) -> None:
        if self.path is None:
            raise ValueError("data.name='file' needs data.path (a .npy or .parquet file)")
        suffix = check_suffix(self.path)
        if suffix == ".npy" and (self.label_column or self.feature_columns):
            raise ValueError(
                "data.label_column/feature_columns are for .parquet; use data.labels_path"
            )
        if suffix == ".parquet" and self.labels_path is not None:
            raise ValueError("data.labels_path is for .npy features; use data.label_column")

    @property
    def yields_images(self) -> bool:
        """True when samples are images [C, H, W] (what a CNN encoder needs)."""
        return self.name == "digits"
