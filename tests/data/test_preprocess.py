"""The recorded preprocessing is exactly what the trainer gives the encoder: applied to a
dataset's raw rows it reproduces ``build_data``'s evaluation splits bit for bit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dist_contrast.data import DataConfig, build_data
from dist_contrast.data.build import EXAMPLE_ROWS
from dist_contrast.data.preprocess import Preprocessing
from tests.data.helpers import SMALL_SYNTHETIC

N, D = 240, 7


@pytest.fixture
def raw_file(tmp_path: Path) -> tuple[np.ndarray, Path]:
    """Raw features far from zero mean / unit scale, and labels that are the row numbers (so
    every evaluation row says which raw row it came from)."""
    rng = np.random.default_rng(3)
    features = (rng.normal(size=(N, D)) * rng.uniform(0.5, 40, D) + rng.normal(0, 50, D))
    np.save(tmp_path / "x.npy", features.astype(np.float64))  # float64: the loader casts
    np.save(tmp_path / "ids.npy", np.arange(N))
    return features, tmp_path


def _file_config(directory: Path, **settings: object) -> DataConfig:
    return DataConfig(name="file", path=str(directory / "x.npy"),
                      labels_path=str(directory / "ids.npy"), max_eval_train=None,
                      max_eval_test=None, **settings)


def test_file_data_is_standardised_with_the_training_rows_statistics(raw_file) -> None:
    features, directory = raw_file
    data = build_data(_file_config(directory), seed=5)
    test_ids, train_ids = data.eval_test[1], data.eval_train[1]
    assert test_ids is not None and train_ids is not None
    assert len(test_ids) + len(train_ids) == N
    # The trainer's z-score, computed here independently: float32 rows, training rows only.
    rows = torch.from_numpy(features.astype(np.float32))
    mean, std = rows[train_ids].mean(dim=0), rows[train_ids].std(dim=0).clamp_min(1e-6)
    expected = (rows[test_ids] - mean) / std
    assert torch.equal(data.eval_test[0], expected)
    pre = data.preprocessing
    assert pre.kind == "standardize" and pre.raw_shape == pre.input_shape == (D,)
    assert torch.equal(pre.apply(features[test_ids.numpy()]), data.eval_test[0])
    assert torch.equal(pre.apply(features[train_ids.numpy()]), data.eval_train[0])
    assert torch.equal(data.raw_example, rows[train_ids[:EXAMPLE_ROWS]])


def test_file_data_without_standardising_goes_in_as_it_is(raw_file) -> None:
    features, directory = raw_file
    data = build_data(_file_config(directory, standardize=False), seed=5)
    assert data.preprocessing == Preprocessing.identity((D,))
    test_ids = data.eval_test[1]
    assert test_ids is not None
    raw = features[test_ids.numpy()]
    assert torch.equal(data.preprocessing.apply(raw), torch.from_numpy(raw.astype(np.float32)))
    assert torch.equal(data.preprocessing.apply(raw), data.eval_test[0])


def test_parquet_feature_columns_are_the_raw_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    columns = {f"f{i}": rng.normal(3, 9, N) for i in range(4)}
    table = pa.table({**columns, "noise": rng.normal(size=N), "label": np.arange(N)})
    pq.write_table(table, tmp_path / "x.parquet")
    cfg = DataConfig(name="file", path=str(tmp_path / "x.parquet"), label_column="label",
                     feature_columns=("f2", "f0", "f3"), max_eval_test=None)
    data = build_data(cfg, seed=1)
    test_ids = data.eval_test[1]
    assert test_ids is not None and data.preprocessing.raw_shape == (3,)
    raw = np.stack([columns[name] for name in ("f2", "f0", "f3")], axis=1)[test_ids.numpy()]
    assert torch.equal(data.preprocessing.apply(raw), data.eval_test[0])


def test_digits_are_scaled_into_unit_images() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = build_data(DataConfig(name="digits"), seed=0)
    pre = data.preprocessing
    assert (pre.kind, pre.raw_shape, pre.input_shape) == ("scale", (64,), (1, 8, 8))
    # The trainer's former formula, verbatim.
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    assert torch.equal(pre.apply(digits.data), images)
    assert torch.equal(pre.apply(digits.images), images)  # any layout of 64 values per row
    # Every held-out image is the preprocessing of some raw row, bit for bit.
    flat = images.reshape(len(images), -1)
    held_out = data.eval_test[0].reshape(len(data.eval_test[0]), -1)
    assert (held_out[:, None, :] == flat[None, :, :]).all(dim=2).any(dim=1).all()
    assert torch.equal(pre.apply(data.raw_example), data.eval_train[0][:EXAMPLE_ROWS])


def test_synthetic_rows_go_in_as_they_are() -> None:
    data = build_data(SMALL_SYNTHETIC, seed=0)
    assert data.preprocessing == Preprocessing.identity((SMALL_SYNTHETIC.dim,))
    assert torch.equal(data.preprocessing.apply(data.eval_test[0]), data.eval_test[0])
    assert torch.equal(data.raw_example, data.eval_train[0][:EXAMPLE_ROWS])


def test_a_json_round_trip_changes_no_bit(raw_file) -> None:
    features, directory = raw_file
    pre = build_data(_file_config(directory), seed=5).preprocessing
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre
    assert torch.equal(again.apply(features), pre.apply(features))
    scale = Preprocessing.scale(16.0, (64,), (1, 8, 8))
    assert Preprocessing.from_dict(json.loads(json.dumps(scale.to_dict()))) == scale


def test_rows_of_another_width_or_dtype_are_refused() -> None:
    pre = Preprocessing.identity((4,))
    with pytest.raises(ValueError, match="have 5 values, the encoder takes 4"):
        pre.apply(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="non-numeric"):
        pre.apply(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ValueError, match="not a preprocessing record"):
        Preprocessing.from_dict({"raw_shape": [4]})
    with pytest.raises(ValueError, match="mean/std need 4 values"):
        Preprocessing(raw_shape=(4,), input_shape=(4,), mean=(0.0,), std=(1.0,))
    read_only = np.zeros((3, 4), dtype=np.float32)
    read_only.flags.writeable = False  # a memory-mapped file: used without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pre.apply(read_only).shape == (3, 4)
