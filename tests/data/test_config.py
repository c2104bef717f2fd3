import pytest
from pydantic import ValidationError

from dist_contrast.data import DataConfig


def test_empty_section_is_valid_synthetic():
    cfg = DataConfig.model_validate({})
    assert cfg.name == "synthetic" and cfg.num_samples == 20_000 and cfg.dim == 64


def test_frozen_and_extra_forbidden():
    cfg = DataConfig()
    with pytest.raises(ValidationError):
        cfg.dim = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        DataConfig.model_validate({"dimension": 3})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "file"}, "needs data.path"),
        ({"name": "file", "path": "x.csv"}, "unsupported extension"),
        ({"name": "digits", "path": "x.npy"}, "applies only to data.name='file'"),
        ({"name": "digits", "dim": 32}, "applies only to data.name='synthetic'"),
        ({"name": "file", "path": "x.npy", "label_column": "y"}, "are for .parquet"),
        ({"name": "file", "path": "x.parquet", "labels_path": "y.npy"}, "is for .npy"),
        ({"dim": 8, "signal_dim": 8}, "must be below"),
        ({"num_test": 10, "test_fraction": 0.1}, "not both"),
        ({"num_samples": 0}, "greater than 0"),
        ({"augment": {"feature_dropout": 1.0}}, "less than 1"),
    ],
)
def test_impossible_settings_are_rejected(fields, message):
    with pytest.raises(ValidationError, match=message):
        DataConfig.model_validate(fields)


def test_yields_images_only_for_digits():
    assert DataConfig(name="digits").yields_images
    assert not DataConfig().yields_images


def test_a_resolved_config_with_num_test_loads_again():
    # The workers receive the driver's config as a full dump (every default spelled out).
    cfg = DataConfig(num_test=100)
    again = DataConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg and again.num_test == 100
