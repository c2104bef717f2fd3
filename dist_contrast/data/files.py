"""Read a user's features from .npy or .parquet, checked, with one-line actionable errors.

:func:`open_features` describes a file from its header (.npy) or metadata (.parquet) without
reading its rows: rows, the shape of one row, the feature columns. Its :meth:`FeatureFile.batches`
is the one batched reader of feature rows (a .npy memory-mapped, a parquet read batch by batch),
used by training (:func:`load_features`) and by ``dist-contrast embed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dist_contrast.data.errors import DataError, check_suffix

# Rows read at once by load_features (bounds its scratch memory to a batch, not the file).
LOAD_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class FeatureFile:
    """A .npy or .parquet file of feature rows, described from its header or metadata.

    ``row_shape``: one row's shape (a .npy array's ``shape[1:]``; a parquet file's number of
    feature columns, or the length of its one list column). ``columns``: a parquet file's
    feature columns (empty for .npy); ``listed``: they are one list column.

    Shape: rows [num_rows, *row_shape]; batches [b, width] float32.
    """

    path: str
    num_rows: int
    row_shape: tuple[int, ...]
    dtype: str
    columns: tuple[str, ...] = ()
    listed: bool = False

    @property
    def width(self) -> int:
        """Values in one row."""
        return math.prod(self.row_shape)

    @property
    def is_parquet(self) -> bool:
        return Path(self.path).suffix.lower() == ".parquet"

    def batches(
        self, batch_rows: int, *, extra_columns: Sequence[str] = ()
    ) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """Rows in file order, ``batch_rows`` at a time (the last batch may be shorter).

        Each batch is a fresh, writeable float32 array of rows flattened to ``width`` values,
        and a dict of the ``extra_columns`` (parquet only: pyarrow arrays of the same rows,
        e.g. an id or label column). NaN/inf are not checked here; nulls in a parquet feature
        column raise ``DataError``.

        Shape: -> ([b, width] float32, {name: pyarrow.Array [b]}).
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        if not self.is_parquet:
            if extra_columns:
                raise DataError(self.path, "a .npy array has no columns",
                                "give the extra columns in a .parquet file")
            yield from ((rows, {}) for rows in self._npy_batches(batch_rows))
            return
        yield from self._parquet_batches(batch_rows, list(extra_columns))

    def _npy_batches(self, batch_rows: int) -> Iterator[np.ndarray]:
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        for start in range(0, self.num_rows, batch_rows):
            chunk = np.array(array[start : start + batch_rows], dtype=np.float32)  # a copy
            yield chunk.reshape(len(chunk), self.width)

    def _parquet_batches(
        self, batch_rows: int, extra: list[str]
    ) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        import pyarrow.parquet as pq

        wanted = [*self.columns, *[name for name in extra if name not in self.columns]]
        done = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows,
                                                            columns=wanted):
            if self.listed:
                rows = _list_rows(self.path, batch.column(self.columns[0]), self.columns[0],
                                  self.width, done)
            else:
                rows = np.empty((batch.num_rows, self.width), dtype=np.float32)
                for j, name in enumerate(self.columns):
                    rows[:, j] = _numeric_values(self.path, batch.column(name), name, done)
            done += batch.num_rows
            yield rows, {name: batch.column(name) for name in extra}


def open_features(
    path: str | Path,
    *,
    feature_columns: Sequence[str] | None = None,
    exclude: Sequence[str | None] = (),
    required: Sequence[str | None] = (),
    key: str = "data.path",
) -> FeatureFile:
    """Describe a feature file from its header (.npy) or metadata (.parquet), rows unread.

    A parquet file's feature columns are ``feature_columns``, else every column not in
    ``exclude`` or ``required``; the ``required`` columns (a label or id column) must be
    there (None is skipped). ``key`` is the setting that named the file (for the
    messages). Raises ``DataError`` (one line) for a missing, foreign, damaged or non-numeric
    file; a .npy file must hold at least 2 dimensions [rows, ...].
    """
    suffix = check_suffix(path, key)
    _check_exists(path, key)
    if suffix == ".npy":
        shape, dtype = _check_npy(path, "features")
        _check_numeric_dtype(path, dtype)
        if len(shape) < 2:
            raise DataError(path, f"features have shape {shape}, not 2-D [rows, features]",
                            "reshape to [N, D], e.g. x.reshape(len(x), -1)")
        return FeatureFile(str(path), int(shape[0]), tuple(int(n) for n in shape[1:]),
                           str(dtype))
    return _open_parquet(path, feature_columns, [*exclude, *required],
                         [name for name in required if name is not None])


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
    Reads :data:`LOAD_BATCH_ROWS` rows at a time into the one float32 result.

    Shape: -> features [N, D] float32, labels [N] int64 or None.
    """
    source = describe_features(path, labels_path=labels_path, label_column=label_column,
                               feature_columns=feature_columns)
    features = np.empty((source.num_rows, source.width), dtype=np.float32)
    done = 0
    for rows, _ in source.batches(LOAD_BATCH_ROWS):
        _check_finite(path, rows, done)
        features[done : done + len(rows)] = rows
        done += len(rows)
    if label_column is not None:
        labels: np.ndarray | None = _parquet_labels(path, label_column)
    else:
        labels = None if labels_path is None else _load_npy_labels(labels_path)
    if labels is not None and len(labels) != len(features):
        raise DataError(
            labels_path or path,
            f"{len(labels)} labels for {len(features)} feature rows",
            "give exactly one label per feature row, in the same order",
        )
    return features, labels


def describe_features(
    path: str | Path,
    *,
    labels_path: str | Path | None = None,
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
) -> FeatureFile:
    """:func:`open_features` for training data: a 2-D .npy file, the settings that go with
    its format, and a labels file that exists. Reads no rows."""
    suffix = check_suffix(path)
    if suffix == ".npy" and (label_column is not None or feature_columns is not None):
        raise DataError(
            path,
            "label_column/feature_columns need a .parquet file",
            "give .npy labels with labels_path instead",
        )
    if suffix == ".parquet" and labels_path is not None:
        raise DataError(
            path,
            "labels_path is for .npy features",
            "name the parquet label column with label_column instead",
        )
    source = open_features(path, feature_columns=feature_columns, required=(label_column,))
    if suffix == ".npy" and len(source.row_shape) != 1:
        raise DataError(
            path,
            f"features have shape {(source.num_rows, *source.row_shape)}, not 2-D "
            "[rows, features]",
            "reshape to [N, D], e.g. x.reshape(len(x), -1)",
        )
    if labels_path is not None:
        _check_labels_file(labels_path)
    return source


def _check_exists(path: str | Path, key: str = "data.path") -> None:
    if not Path(path).is_file():
        raise DataError(
            path,
            "file not found",
            f"check {key} (relative paths start at the working directory)",
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


def _check_npy(path: str | Path, what: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """An empty, foreign, truncated or object-array ``.npy`` file, each said in one line;
    else the array's shape and dtype.

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
            version = np.lib.format.read_magic(handle)
            reader = _NPY_HEADER_READERS.get(version, _read_header_any)
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
    return tuple(shape), dtype


def _read_header_any(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """A header of a newer .npy version (3.0: utf-8 field names), read by numpy's own reader."""
    return np.lib.format._read_array_header(handle, version=None)  # type: ignore[attr-defined]


def _check_numeric_dtype(path: str | Path, dtype: np.dtype[Any]) -> None:
    if dtype.kind not in "biuf":  # bool, integers, floats: complex, strings, dates are not
        raise DataError(
            path,
            f"features have non-numeric dtype {dtype}",
            "convert them to float32 before saving",
        )


def _check_finite(path: str | Path, rows: np.ndarray, first_row: int) -> None:
    bad = ~np.isfinite(rows)
    if bad.any():
        row = first_row + int(np.argwhere(bad)[0][0])
        raise DataError(
            path,
            f"{int(bad.sum())} NaN/inf feature values (first in row {row})",
            "drop or impute those rows before training",
        )


def _check_labels_file(path: str | Path) -> None:
    if Path(path).suffix.lower() != ".npy":
        raise DataError(path, "data.labels_path must be a .npy file",
                        "save the labels with numpy.save")
    _check_exists(path, "data.labels_path")


def _load_npy_labels(path: str | Path) -> np.ndarray:
    _check_labels_file(path)
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


def _open_parquet(
    path: str | Path,
    feature_columns: Sequence[str] | None,
    exclude: Sequence[str | None],
    required: Sequence[str],
) -> FeatureFile:
    """A parquet file's feature columns and rows from its metadata (no rows read, except the
    first row of a variable-length list column, whose width only the data says)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as error:
        raise DataError(
            path,
            f"not a readable parquet file ({type(error).__name__})",
            "write it with pandas.DataFrame.to_parquet or pyarrow",
        ) from error
    names = list(schema.names)
    wanted = (list(feature_columns) if feature_columns is not None
              else [name for name in names if name not in set(exclude)])
    for name in [*wanted, *required]:
        if name not in names:
            raise DataError(path, f"no column {name!r} (columns: {_names(names)})",
                            "fix data.feature_columns / data.label_column")
    if not wanted:
        raise DataError(path, "no feature columns", "add feature columns or fix feature_columns")
    num_rows = int(parquet.metadata.num_rows)
    if len(wanted) == 1 and _is_list(schema.field(wanted[0]).type):
        arrow_type = schema.field(wanted[0]).type
        _check_numeric_type(path, arrow_type.value_type, wanted[0], "list column")
        width = getattr(arrow_type, "list_size", None)
        if width is None:  # a variable-length list: its first row gives the width
            width = _first_list_length(parquet, wanted[0]) if num_rows else 0
        return FeatureFile(str(path), num_rows, (int(width),), str(arrow_type.value_type),
                           (wanted[0],), listed=True)
    types = {str(schema.field(name).type) for name in wanted}
    for name in wanted:
        _check_numeric_type(path, schema.field(name).type, name, "feature column")
    dtype = types.pop() if len(types) == 1 else "mixed"
    return FeatureFile(str(path), num_rows, (len(wanted),), dtype, tuple(wanted))


def _first_list_length(parquet: Any, column: str) -> int:
    import pyarrow.compute as pc

    first = next(parquet.iter_batches(batch_size=1, columns=[column]))
    lengths = pc.list_value_length(first.column(column)).to_numpy(zero_copy_only=False)
    return int(lengths[0]) if len(lengths) and lengths[0] == lengths[0] else 0


def _parquet_labels(path: str | Path, label_column: str) -> np.ndarray:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=[label_column]).column(label_column)
    if column.null_count:
        raise DataError(
            path,
            f"label column {label_column!r} has {column.null_count} nulls",
            "drop unlabelled rows or leave label_column unset",
        )
    return _encode_labels(path, np.asarray(column.to_numpy(zero_copy_only=False)))


def _is_list(arrow_type: object) -> bool:
    """Whether a parquet column's arrow type is a list (one column holding the whole row)."""
    import pyarrow as pa

    return bool(
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _check_numeric_type(path: str | Path, arrow_type: Any, name: str, what: str) -> None:
    import pyarrow as pa

    if not (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
            or pa.types.is_boolean(arrow_type)):
        raise DataError(
            path,
            f"{what} {name!r} has non-numeric type {arrow_type}",
            "encode it as numbers or leave it out of the feature columns",
        )


def _nulls(path: str | Path, name: str, first_row: int) -> DataError:
    return DataError(path, f"column {name!r} has nulls (in the rows from {first_row})",
                     "drop or impute those rows before training")


def _numeric_values(path: str | Path, column: Any, name: str, first_row: int) -> np.ndarray:
    """One batch of a numeric feature column. Shape: [b]."""
    if column.null_count:
        raise _nulls(path, name, first_row)
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _list_rows(path: str | Path, column: Any, name: str, width: int,
               first_row: int) -> np.ndarray:
    """One batch of a list column as rows of ``width`` values. Shape: [b, width] float32."""
    import pyarrow.compute as pc

    if column.null_count:
        raise _nulls(path, name, first_row)
    lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    if len(lengths) and (lengths != width).any():
        row = int(np.argmax(lengths != width))
        raise DataError(
            path,
            f"list column {name!r} has rows of different lengths (row {first_row + row} holds "
            f"{lengths[row]} values, the first row {width})",
            "give every row the same length",
        )
    values = column.flatten()
    if values.null_count:
        raise _nulls(path, name, first_row)
    flat = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32)  # writeable
    return flat.reshape(len(lengths), width)


def _names(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
