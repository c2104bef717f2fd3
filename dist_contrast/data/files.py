"""Load a user's features from .npy or .parquet, checked, with one-line actionable errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dist_contrast.data.errors import DataError, check_suffix


def load_features(
    path: str | Path,
    *,
    labels_path: str | Path | None = None,
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read features [N, D] and optional labels [N] from a .npy or .parquet file.

    Labels may be any integers or strings; they are mapped to 0..K-1 (sorted order), which is
    all kNN accuracy and linear probes need. Raises ``DataError`` for anything unusable.

    Shape: -> features [N, D] float32, labels [N] int64 or None.
    """
    suffix = check_suffix(path)
    _check_exists(path)
    if suffix == ".npy":
        if label_column is not None or feature_columns is not None:
            raise DataError(
                path,
                "label_column/feature_columns need a .parquet file",
                "give .npy labels with labels_path instead",
            )
        features = _check_features(path, _load_npy(path, "features"))
        labels = None if labels_path is None else _load_npy_labels(labels_path)
    else:
        if labels_path is not None:
            raise DataError(
                path,
                "labels_path is for .npy features",
                "name the parquet label column with label_column instead",
            )
        features, labels = _load_parquet(path, label_column, feature_columns)
        features = _check_features(path, features)
    if labels is not None and len(labels) != len(features):
        raise DataError(
            labels_path or path,
            f"{len(labels)} labels for {len(features)} feature rows",
            "give exactly one label per feature row, in the same order",
        )
    return features, labels


def _check_exists(path: str | Path) -> None:
    if not Path(path).is_file():
        raise DataError(
            path,
            "file not found",
            "check data.path (relative paths start at the working directory)",
        )


def _load_npy(path: str | Path, what: str) -> np.ndarray:
    _check_npy(path, what)
    try:
        # allow_pickle=False: an object array would execute code on load and is not numeric.
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            path, f"{what} are not a readable .npy array ({reason})", "write it with numpy.save"
        ) from error


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npy(path: str | Path, what: str) -> None:
    """An empty, foreign, truncated or object-array ``.npy`` file, each said in one line.

    Reads only the header: the file's size must cover the array the header announces
    (a copy cut short otherwise fails inside ``np.load`` with a low-level message).
    """
    size = Path(path).stat().st_size
    fix = "write the array again with numpy.save(path, x)"
    if size == 0:
        raise DataError(path, f"the {what} file is empty (0 bytes)", fix)
    with open(path, "rb") as handle:
        start = handle.read(len(_NPY_MAGIC))
        if start != _NPY_MAGIC:
            kind = "it is a zip archive: an .npz?" if start.startswith(b"PK") else (
                "it does not start with numpy's .npy signature"
            )
            raise DataError(path, f"the {what} file is not a .npy file ({kind})", fix)
        handle.seek(0)
        try:
            reader = _NPY_HEADER_READERS.get(np.lib.format.read_magic(handle))
            if reader is None:  # a newer header version: np.load reads it
                return
            shape, _, dtype = reader(handle)
        except ValueError as error:
            raise DataError(
                path, f"the {what} file's .npy header is truncated or damaged ({error})", fix
            ) from error
        data_start = handle.tell()
    if dtype.hasobject:
        raise DataError(
            path,
            f"{what} are an object (pickled) array, not numbers",
            "save a numeric array, e.g. np.save(path, x.astype(np.float32))",
        )
    expected = data_start + math.prod(shape) * dtype.itemsize
    if size < expected:
        raise DataError(
            path,
            f"the {what} file is truncated: {size:,} of {expected:,} bytes for a "
            f"{list(shape)} {dtype} array (an interrupted copy or save?)",
            fix,
        )


def _check_features(path: str | Path, features: np.ndarray) -> np.ndarray:
    if features.ndim != 2:
        raise DataError(
            path,
            f"features have shape {features.shape}, not 2-D [rows, features]",
            "reshape to [N, D], e.g. x.reshape(len(x), -1)",
        )
    if not (np.issubdtype(features.dtype, np.number) or features.dtype == np.bool_) or (
        np.issubdtype(features.dtype, np.complexfloating)
    ):
        raise DataError(
            path,
            f"features have non-numeric dtype {features.dtype}",
            "convert them to float32 before saving",
        )
    out = features.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(
            path,
            f"{int(bad.sum())} NaN/inf feature values (first in row {row})",
            "drop or impute those rows before training",
        )
    return out


def _load_npy_labels(path: str | Path) -> np.ndarray:
    check_suffix(path)
    _check_exists(path)
    if Path(path).suffix.lower() != ".npy":
        raise DataError(path, "labels_path must be a .npy file", "save labels with numpy.save")
    labels = _load_npy(path, "labels")
    if labels.ndim != 1:
        raise DataError(
            path,
            f"labels have shape {labels.shape}, not 1-D [rows]",
            "save one label per row, e.g. y.reshape(-1)",
        )
    return _encode_labels(path, labels)


def _encode_labels(path: str | Path, labels: np.ndarray) -> np.ndarray:
    if labels.dtype == object and all(isinstance(label, str) for label in labels):
        labels = labels.astype(str)  # arrow string columns arrive as Python objects
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError(
                path,
                "labels are not whole numbers",
                "give class ids (integers or strings), not continuous targets",
            )
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype.kind in "USb"):
        raise DataError(
            path,
            f"labels have unsupported dtype {labels.dtype}",
            "give class ids as integers or strings",
        )
    _, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64).reshape(-1)


def _load_parquet(
    path: str | Path, label_column: str | None, feature_columns: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(
            path,
            f"not a readable parquet file ({type(error).__name__})",
            "write it with pandas.DataFrame.to_parquet or pyarrow",
        ) from error
    names = table.column_names
    wanted = (
        list(feature_columns)
        if feature_columns is not None
        else [name for name in names if name != label_column]
    )
    for name in [*wanted, *([label_column] if label_column else [])]:
        if name not in names:
            raise DataError(
                path,
                f"no column {name!r} (columns: {', '.join(names)})",
                "fix data.feature_columns / data.label_column",
            )
    if not wanted:
        raise DataError(path, "no feature columns", "add feature columns or fix feature_columns")
    if len(wanted) == 1 and _is_list(table.schema.field(wanted[0]).type):
        features = _list_column(path, table.column(wanted[0]), wanted[0])
    else:
        features = np.stack([_numeric_column(path, table.column(n), n) for n in wanted], axis=1)
    labels = None
    if label_column is not None:
        column = table.column(label_column)
        if column.null_count:
            raise DataError(
                path,
                f"label column {label_column!r} has {column.null_count} nulls",
                "drop unlabelled rows or leave label_column unset",
            )
        labels = _encode_labels(path, np.asarray(column.to_numpy(zero_copy_only=False)))
    return features, labels


def _is_list(arrow_type: object) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _numeric_column(path: str | Path, column: object, name: str) -> np.ndarray:
    import pyarrow as pa

    arrow_type = column.type  # type: ignore[attr-defined]
    if not (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    ):
        raise DataError(
            path,
            f"feature column {name!r} has non-numeric type {arrow_type}",
            "encode it as numbers or leave it out of data.feature_columns",
        )
    if column.null_count:  # type: ignore[attr-defined]
        raise DataError(
            path, f"feature column {name!r} has nulls", "drop or impute those rows before training"
        )
    return np.asarray(column.to_numpy(), dtype=np.float64)  # type: ignore[attr-defined]


def _list_column(path: str | Path, column: object, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    chunked = column.combine_chunks()  # type: ignore[attr-defined]
    if chunked.null_count:
        raise DataError(path, f"list column {name!r} has null rows", "drop those rows")
    lengths = np.asarray(pc.list_value_length(chunked).to_numpy(zero_copy_only=False))
    if len(lengths) and (lengths != lengths[0]).any():
        raise DataError(
            path,
            f"list column {name!r} has rows of different lengths "
            f"({lengths.min()}..{lengths.max()})",
            "give every row the same length",
        )
    values = chunked.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(
            path,
            f"list column {name!r} holds non-numeric {values.type}",
            "store numbers in the list",
        )
    width = int(lengths[0]) if len(lengths) else 0
    flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return flat.reshape(len(lengths), width)
