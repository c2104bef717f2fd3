import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_contrast.data import DataConfig, DataError, build_data, load_features


def _npy(path, array):
    np.save(path, array)
    return str(path)


def _parquet(path, columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def _one_line_error(call, *fragments):
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and ";" in message  # problem; fix
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.npy")
    _one_line_error(lambda: load_features(path), path, "file not found")


def test_wrong_extension(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("1,2\n")
    _one_line_error(lambda: load_features(path), "x.csv", "unsupported extension", ".npy")


@pytest.mark.parametrize("shape", [(10,), (10, 2, 2)])
def test_not_two_dimensional(tmp_path, shape):
    path = _npy(tmp_path / "x.npy", np.zeros(shape))
    _one_line_error(lambda: load_features(path), path, "not 2-D", "reshape")


def test_non_numeric_npy(tmp_path):
    path = _npy(tmp_path / "x.npy", np.array([["a", "b"], ["c", "d"]]))
    _one_line_error(lambda: load_features(path), "non-numeric dtype", "float32")


def test_pickled_object_npy(tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, np.array([[1, "a"]], dtype=object), allow_pickle=True)
    _one_line_error(lambda: load_features(path), "object (pickled) array")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, bad):
    array = np.ones((20, 3))
    array[4, 1] = bad
    path = _npy(tmp_path / "x.npy", array)
    _one_line_error(lambda: load_features(path), "NaN/inf", "row 4")


def test_label_length_mismatch(tmp_path):
    path = _npy(tmp_path / "x.npy", np.ones((20, 3)))
    labels = _npy(tmp_path / "y.npy", np.arange(19))
    _one_line_error(lambda: load_features(path, labels_path=labels), "y.npy", "19 labels for 20")


def test_labels_not_one_dimensional_or_not_classes(tmp_path):
    path = _npy(tmp_path / "x.npy", np.ones((4, 3)))
    labels = _npy(tmp_path / "y.npy", np.zeros((4, 2)))
    _one_line_error(lambda: load_features(path, labels_path=labels), "not 1-D")
    labels = _npy(tmp_path / "y.npy", np.array([0.5, 1, 2, 3]))
    _one_line_error(lambda: load_features(path, labels_path=labels), "not whole numbers")


def test_too_few_rows(tmp_path):
    path = _npy(tmp_path / "x.npy", np.ones((5, 3)))
    cfg = DataConfig(name="file", path=path)
    _one_line_error(lambda: build_data(cfg), path, "only 5 rows", "add rows")


def test_test_split_leaves_too_few_training_rows(tmp_path):
    path = _npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(12, 3)))
    cfg = DataConfig(name="file", path=path, num_test=11)
    _one_line_error(lambda: build_data(cfg), path, "too few", "num_test")


def test_parquet_missing_and_non_numeric_columns(tmp_path):
    path = _parquet(tmp_path / "x.parquet", {"a": [1.0, 2.0], "s": ["x", "y"]})
    _one_line_error(lambda: load_features(path, label_column="y"), "no column 'y'")
    _one_line_error(lambda: load_features(path, feature_columns=["b"]), "no column 'b'")
    _one_line_error(lambda: load_features(path), "'s' has non-numeric type string")


def test_parquet_nulls_and_nan(tmp_path):
    path = _parquet(tmp_path / "x.parquet", {"a": [1.0, None, 3.0]})
    _one_line_error(lambda: load_features(path), "'a' has nulls")
    path = _parquet(tmp_path / "n.parquet", {"a": [1.0, float("nan"), 3.0]})
    _one_line_error(lambda: load_features(path), "NaN/inf")


def test_parquet_ragged_list_column(tmp_path):
    path = _parquet(tmp_path / "x.parquet", {"v": [[1.0, 2.0], [3.0]]})
    _one_line_error(lambda: load_features(path), "different lengths")


def test_parquet_list_column_and_string_labels(tmp_path):
    path = _parquet(
        tmp_path / "x.parquet", {"v": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "y": ["b", "a", "b"]}
    )
    features, labels = load_features(path, label_column="y")
    assert features.shape == (3, 2) and features.dtype == np.float32
    assert labels is not None and labels.tolist() == [1, 0, 1]


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet")
    _one_line_error(lambda: load_features(path), "not a readable parquet file")


def test_empty_npy(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"")
    _one_line_error(lambda: load_features(path), "x.npy", "empty (0 bytes)", "numpy.save")


def test_truncated_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((20, 3), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    _one_line_error(
        lambda: load_features(path), "x.npy", "truncated", "338 of 368 bytes", "[20, 3] float32"
    )
    path.write_bytes(data[:40])  # cut inside the header
    _one_line_error(lambda: load_features(path), "x.npy", "header is truncated")


def test_a_file_named_npy_that_is_not_one(tmp_path):
    path = tmp_path / "x.npy"
    path.write_text("a,b\n1,2\n")
    message = _one_line_error(lambda: load_features(path), "not a .npy file", "numpy.save")
    assert "pickled" not in message
    np.savez(tmp_path / "y.npz", x=np.ones((20, 3)))
    (tmp_path / "y.npz").rename(tmp_path / "y.npy")
    _one_line_error(lambda: load_features(tmp_path / "y.npy"), "zip archive", ".npz")


def test_truncated_labels_npy(tmp_path):
    path = _npy(tmp_path / "x.npy", np.ones((20, 3)))
    labels = tmp_path / "y.npy"
    np.save(labels, np.arange(20))
    labels.write_bytes(labels.read_bytes()[:-8])
    _one_line_error(lambda: load_features(path, labels_path=labels), "y.npy", "labels file is")
