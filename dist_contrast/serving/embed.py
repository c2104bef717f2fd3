"""``dist-contrast embed``: a trained encoder over a .npy or .parquet file of raw rows.

Neither the input nor the output is ever held whole: a .npy input is memory-mapped and a
parquet input read batch by batch; a .npy output is a memory map filled in place and a parquet
output is written batch by batch. The output is written under a temporary name beside OUTPUT
and renamed at the end, so a failure (or Ctrl-C) leaves no half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dist_contrast.errors import UserError
from dist_contrast.serving.load import LoadedEncoder

SUFFIXES = (".npy", ".parquet")
Batch = tuple[np.ndarray, Any]  # raw rows [b, raw_width] float32, and their ids (arrow) or None


def check_paths(
    input_path: str | Path, output_path: str | Path, *, ids_column: str | None = None,
    overwrite: bool = False,
) -> None:
    """What can be refused before a model is loaded: formats, a missing INPUT, an existing
    OUTPUT (without ``overwrite``), an id column in a .npy INPUT."""
    source, target = Path(input_path), Path(output_path)
    for role, path in (("INPUT", source), ("OUTPUT", target)):
        if path.suffix.lower() not in SUFFIXES:
            raise UserError(f"{role} '{path}' must be a .npy or .parquet file (by its extension)")
    if not source.is_file():
        raise UserError(f"INPUT '{source}' not found (or not a file); check the path")
    if target.exists() and target.resolve() == source.resolve():
        raise UserError(f"OUTPUT '{target}' is the INPUT; write the embeddings to another file")
    if target.is_dir():
        raise UserError(f"OUTPUT '{target}' is a folder; give a .npy or .parquet file name")
    if target.exists() and not overwrite:
        raise UserError(f"OUTPUT '{target}' exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise UserError(f"the folder of OUTPUT '{target}' does not exist; create it first")
    if ids_column is not None and source.suffix.lower() == ".npy":
        raise UserError(f"--ids-column {ids_column} needs a .parquet INPUT (a .npy array has no "
                        "columns; its output row i is input row i)")


def embed_file(
    loaded: LoadedEncoder, input_path: str | Path, output_path: str | Path, *,
    batch_size: int = 1024, ids_column: str | None = None, overwrite: bool = False,
    progress: bool | None = None,
) -> int:
    """Embed every row of ``input_path`` into ``output_path`` with ``loaded.module`` (the
    training preprocessing included), ``batch_size`` rows at a time; returns the row count.

    A parquet output holds ``ids_column`` (when given) and one float32 column per output value,
    ``embedding_0`` ...; a .npy output is one float32 array in INPUT's row order (the id column
    of a parquet INPUT is then left out of the features and not written). ``progress`` shows a
    bar (default: when stderr is a terminal). Raises ``UserError`` (one line) for anything
    unusable.

    Shape: INPUT [N, *raw_shape] -> OUTPUT [N, output_dim] float32.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    check_paths(input_path, output_path, ids_column=ids_column, overwrite=overwrite)
    rows = open_rows(input_path, loaded, ids_column)
    target = Path(output_path)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    writer: _Writer | None = None
    try:
        writer = _writer(partial, target.suffix.lower(), rows, loaded.output_dim)
        _embed_batches(loaded, rows, writer, batch_size, progress)
        finished, writer = writer, None
        finished.close()
        os.replace(partial, target)  # complete or absent: never half a file under OUTPUT
    finally:
        if writer is not None:  # failed midway: release the file before removing it
            with contextlib.suppress(Exception):
                writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    return rows.num_rows


def _embed_batches(loaded: LoadedEncoder, rows: _Rows, writer: _Writer, batch_size: int,
                   progress: bool | None) -> None:
    device = next(loaded.module.parameters()).device
    done = 0
    with _progress_bar(rows.num_rows, progress) as advance, torch.inference_mode():
        for raw, ids in rows.batches(batch_size):
            bad = ~np.isfinite(raw)
            if bad.any():
                row = done + int(np.argwhere(bad)[0][0])
                raise UserError(f"INPUT row {row} has NaN/inf values; drop or impute such rows "
                                "(training refused them too)")
            out = loaded.module(torch.from_numpy(raw).to(device)).cpu().numpy()
            writer.write(out, ids)
            done += len(raw)
            advance(len(raw))


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool | None) -> Iterator[Any]:
    """A rich progress bar on stderr; quiet unless stderr is a terminal (or ``enabled``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    disable = not console.is_terminal if enabled is None else not enabled
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=disable) as bar:
        task = bar.add_task("embed", total=total)
        yield lambda n: bar.advance(task, n)


# ----------------------------------------------------------------------------- reading


class _Rows(Protocol):
    num_rows: int
    ids_field: Any  # the id column's arrow field, or None

    def batches(self, size: int) -> Iterator[Batch]: ...


def open_rows(path: str | Path, loaded: LoadedEncoder, ids_column: str | None = None) -> _Rows:
    """INPUT's rows, checked against the encoder's raw row width (one ``UserError`` line)."""
    if Path(path).suffix.lower() == ".npy":
        return _NpyRows(Path(path), loaded.preprocessing.raw_width, loaded.raw_shape)
    label = feature_columns = None
    if loaded.config is not None and loaded.config.data.name == "file":
        label, feature_columns = loaded.config.data.label_column, loaded.config.data.feature_columns
    return _ParquetRows(Path(path), loaded.preprocessing.raw_width, ids_column, label,
                        feature_columns)


def _width_error(path: Path, what: str, width: int, raw_shape: tuple[int, ...]) -> UserError:
    return UserError(f"INPUT '{path}' has {what}, the encoder takes rows of {width} values "
                     f"{list(raw_shape)}; give rows like those it was trained on")


class _NpyRows:
    """A .npy array [N, ...] with ``width`` values per row, memory-mapped."""

    ids_field = None

    def __init__(self, path: Path, width: int, raw_shape: tuple[int, ...]) -> None:
        try:
            # allow_pickle stays False: an object array would run code on load.
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            reason = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else "empty"
            raise UserError(f"INPUT '{path}' is not a readable .npy array ({reason}); write it "
                            "with numpy.save") from None
        if not isinstance(array, np.ndarray) or array.ndim < 2:
            shape = getattr(array, "shape", "an archive")
            raise UserError(f"INPUT '{path}' holds {shape}, not rows [N, features]; reshape it "
                            "to [N, D], e.g. x.reshape(len(x), -1)")
        if array.dtype.kind not in "biuf":
            raise UserError(f"INPUT '{path}' has dtype {array.dtype}, not numbers; save it as "
                            "float32")
        if int(np.prod(array.shape[1:])) != width:
            raise _width_error(path, f"rows of shape {list(array.shape[1:])}", width, raw_shape)
        self.array, self.width, self.num_rows = array, width, int(array.shape[0])

    def batches(self, size: int) -> Iterator[Batch]:
        for start in range(0, self.num_rows, size):
            chunk = np.array(self.array[start : start + size], dtype=np.float32)  # a copy
            yield chunk.reshape(len(chunk), self.width), None


class _ParquetRows:
    """A parquet file's feature columns (one numeric column per value, or one list column),
    read by batches; an optional id column is carried along."""

    def __init__(self, path: Path, width: int, ids_column: str | None, label: str | None,
                 feature_columns: tuple[str, ...] | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"INPUT '{path}' is not a readable parquet file "
                            f"({type(exc).__name__}); write it with pandas.DataFrame.to_parquet "
                            "or pyarrow") from None
        schema = self.file.schema_arrow
        if ids_column is not None and ids_column not in schema.names:
            raise UserError(f"INPUT '{path}' has no column {ids_column!r} (columns: "
                            f"{_names(schema.names)}); fix --ids-column")
        self.path, self.width, self.ids_column = path, width, ids_column
        self.columns = _feature_columns(schema.names, ids_column, label, feature_columns)
        self.listed = len(self.columns) == 1 and _is_list(schema.field(self.columns[0]).type)
        self._check_types(schema)
        self.num_rows = int(self.file.metadata.num_rows)
        self.ids_field = schema.field(ids_column) if ids_column is not None else None

    def _check_types(self, schema: Any) -> None:
        import pyarrow as pa

        for name in self.columns:
            kind = schema.field(name).type
            value = kind.value_type if self.listed else kind
            if not (pa.types.is_integer(value) or pa.types.is_floating(value)
                    or pa.types.is_boolean(value)):
                raise UserError(f"INPUT '{self.path}' column {name!r} has type {kind}, not "
                                "numbers; leave it out, or name it with --ids-column if it is an "
                                "id")
        size = getattr(schema.field(self.columns[0]).type, "list_size", None)
        if self.listed and size is not None and size != self.width:
            raise UserError(f"INPUT '{self.path}' list column {self.columns[0]!r} holds "
                            f"{size} values per row, the encoder takes {self.width}")
        if not self.listed and len(self.columns) != self.width:
            raise UserError(
                f"INPUT '{self.path}' has {len(self.columns)} feature columns "
                f"({_names(self.columns)}), the encoder takes {self.width}; give exactly its "
                "feature columns (an id column with --ids-column)"
            )

    def batches(self, size: int) -> Iterator[Batch]:
        wanted = [*self.columns, *([self.ids_column] if self.ids_column else [])]
        done = 0
        for batch in self.file.iter_batches(batch_size=size, columns=wanted):
            raw = self._list_rows(batch, done) if self.listed else self._column_rows(batch, done)
            ids = batch.column(self.ids_column) if self.ids_column else None
            done += batch.num_rows
            yield raw, ids

    def _column_rows(self, batch: Any, done: int) -> np.ndarray:
        out = np.empty((batch.num_rows, self.width), dtype=np.float32)
        for j, name in enumerate(self.columns):
            column = batch.column(name)
            if column.null_count:
                raise self._nulls(name, done)
            out[:, j] = column.to_numpy(zero_copy_only=False)
        return out

    def _list_rows(self, batch: Any, done: int) -> np.ndarray:
        import pyarrow.compute as pc

        name = self.columns[0]
        column = batch.column(name)
        if column.null_count:
            raise self._nulls(name, done)
        lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
        if len(lengths) and (lengths != self.width).any():
            row = done + int(np.argmax(lengths != self.width))
            raise UserError(f"INPUT '{self.path}' row {row} of list column {name!r} holds "
                            f"{lengths[row - done]} values, the encoder takes {self.width}")
        values = column.flatten()
        if values.null_count:
            raise self._nulls(name, done)
        flat = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32)  # writeable
        return flat.reshape(batch.num_rows, self.width)

    def _nulls(self, name: str, done: int) -> UserError:
        return UserError(f"INPUT '{self.path}' column {name!r} has nulls (in the batch from row "
                         f"{done}); drop or impute those rows")


def _feature_columns(names: list[str], ids_column: str | None, label: str | None,
                     trained_on: tuple[str, ...] | None) -> list[str]:
    """The training run's feature columns when the file has them all; else every column but
    the id column and the training label column."""
    if trained_on and all(name in names for name in trained_on):
        return list(trained_on)
    return [name for name in names if name not in {ids_column, label}]


def _is_list(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
                or pa.types.is_fixed_size_list(arrow_type))


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ----------------------------------------------------------------------------- writing


class _Writer(Protocol):
    def write(self, out: np.ndarray, ids: Any) -> None: ...
    def close(self) -> None: ...


def _writer(path: str, suffix: str, rows: _Rows, dim: int) -> _Writer:
    if suffix == ".npy":
        return _NpyWriter(path, rows.num_rows, dim)
    return _ParquetWriter(path, rows.ids_field, dim)


class _NpyWriter:
    """A float32 .npy file [N, dim] created at its full size and filled in place."""

    def __init__(self, path: str, num_rows: int, dim: int) -> None:
        self.path, self.offset = path, 0
        if num_rows == 0:  # a zero-length memory map cannot be made
            np.save(path, np.empty((0, dim), dtype=np.float32))
            self.array: np.ndarray | None = None
            return
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                               shape=(num_rows, dim))

    def write(self, out: np.ndarray, ids: Any) -> None:
        assert self.array is not None
        self.array[self.offset : self.offset + len(out)] = out
        self.offset += len(out)

    def close(self) -> None:
        if self.array is not None:
            self.array.flush()  # type: ignore[attr-defined]
            self.array = None  # unmapped once no reference is left


class _ParquetWriter:
    """A parquet file: the id column (when given) and ``embedding_0`` ... as float32 columns."""

    def __init__(self, path: str, ids_field: Any, dim: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [pa.field(f"embedding_{i}", pa.float32()) for i in range(dim)]
        self.schema = pa.schema(([ids_field] if ids_field is not None else []) + fields)
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, out: np.ndarray, ids: Any) -> None:
        import pyarrow as pa

        columns = [pa.array(out[:, i]) for i in range(out.shape[1])]
        arrays = ([ids] if ids is not None else []) + columns
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()
