"""``dist-contrast embed``: a trained encoder over a .npy or .parquet file of raw rows.

Neither the input nor the output is ever held whole: a .npy input is memory-mapped and a
parquet input read batch by batch; a .npy output is a memory map filled in place and a parquet
output is written batch by batch. The output is written under a temporary name beside OUTPUT
and renamed at the end, so a failure (or Ctrl-C) leaves no half-written file behind; it is
created with the mode the user's umask gives, as any file the user writes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dist_contrast.data import DataError, FeatureFile, open_features
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
    check_output(target, "OUTPUT", "a .npy or .parquet", overwrite=overwrite)
    if ids_column is not None and source.suffix.lower() == ".npy":
        raise UserError(f"--ids-column {ids_column} needs a .parquet INPUT (a .npy array has no "
                        "columns; its output row i is input row i)")


def check_output(target: Path, role: str, kinds: str, *, overwrite: bool) -> None:
    """The refusals every command that writes a file shares: a folder, an existing file
    (without ``overwrite``), a missing parent folder. ``role``: how the command names it
    (``OUTPUT``, ``-o``); ``kinds``: the file names it takes (``a .npy``)."""
    if target.is_dir():
        raise UserError(f"{role} '{target}' is a folder; give {kinds} file name")
    if target.exists() and not overwrite:
        raise UserError(f"{role} '{target}' exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise UserError(f"the folder of {role} '{target}' does not exist; create it first")


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
    partial: Path | None = None
    writer: _Writer | None = None
    try:
        partial = _create_partial(target)
        writer = _writer(str(partial), target.suffix.lower(), rows, loaded.output_dim)
        _embed_batches(loaded, rows, writer, batch_size, progress)
        finished, writer = writer, None
        finished.close()
        os.replace(partial, target)  # complete or absent: never half a file under OUTPUT
    finally:
        if writer is not None:  # failed midway: release the file before removing it
            with contextlib.suppress(Exception):
                writer.close()
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
    return rows.num_rows


def _create_partial(target: Path) -> Path:
    """A new empty file beside ``target`` under a hidden name of its own. Made with
    ``os.open(..., 0o666)``, so the user's umask sets its mode (``tempfile.mkstemp`` makes
    0600, which teammates who share the output folder could not read)."""
    while True:
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # another writer's name: draw again
            continue
        return partial


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
def _progress_bar(total: int, enabled: bool | None, label: str = "embedding") -> Iterator[Any]:
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
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=disable) as bar:
        task = bar.add_task("embed", total=total)
        yield lambda n: bar.advance(task, n)


# ----------------------------------------------------------------------------- reading


class _Rows:
    """INPUT's feature rows, read a batch at a time by the data package's one batched reader
    (:class:`~dist_contrast.data.FeatureFile`), with the id column carried along."""

    def __init__(self, source: FeatureFile, ids_column: str | None, ids_field: Any) -> None:
        self.source, self.ids_column, self.ids_field = source, ids_column, ids_field
        self.num_rows = source.num_rows

    def batches(self, size: int) -> Iterator[Batch]:
        extra = [self.ids_column] if self.ids_column else []
        try:
            for raw, columns in self.source.batches(size, extra_columns=extra):
                yield raw, columns.get(self.ids_column) if self.ids_column else None
        except DataError as exc:  # nulls, a ragged list column: found as the rows are read
            raise _input_error(exc) from None


def open_rows(path: str | Path, loaded: LoadedEncoder, ids_column: str | None = None) -> _Rows:
    """INPUT's rows, checked against the encoder's raw row width (one ``UserError`` line),
    from the file's header or metadata: no row is read yet.

    A parquet INPUT's features are the training run's feature columns when it has them all,
    else every column but ``ids_column`` and the training label column."""
    width, raw_shape = loaded.preprocessing.raw_width, loaded.raw_shape
    trained = loaded.config.data if loaded.config is not None else None
    label = getattr(trained, "label_column", None)
    names = _parquet_names(Path(path)) if Path(path).suffix.lower() == ".parquet" else []
    if ids_column is not None and ids_column not in names:
        raise UserError(f"INPUT '{path}' has no column {ids_column!r} (columns: "
                        f"{_names(names)}); fix --ids-column")
    columns = getattr(trained, "feature_columns", None)
    chosen = list(columns) if columns and all(name in names for name in columns) else None
    try:
        source = open_features(path, feature_columns=chosen, exclude=(ids_column, label),
                               key="INPUT")
    except DataError as exc:
        raise _input_error(exc) from None
    if source.width != width:
        raise _width_error(source, width, raw_shape)
    ids_field = None
    if ids_column is not None:
        import pyarrow.parquet as pq

        ids_field = pq.ParquetFile(path).schema_arrow.field(ids_column)
    return _Rows(source, ids_column, ids_field)


def _parquet_names(path: Path) -> list[str]:
    """A parquet INPUT's column names (its metadata only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"INPUT '{path}' is not a readable parquet file "
                        f"({type(exc).__name__}); write it with pandas.DataFrame.to_parquet "
                        "or pyarrow") from None


def _input_error(exc: DataError) -> UserError:
    """The data reader's line, said of INPUT."""
    return UserError(f"INPUT '{exc.path}': {exc.problem}; {exc.fix}" if exc.path
                     else f"INPUT: {exc}")


def _width_error(source: FeatureFile, width: int, raw_shape: tuple[int, ...]) -> UserError:
    where = f"INPUT '{source.path}'"
    if source.is_parquet and source.listed:
        return UserError(f"{where} list column {source.columns[0]!r} holds {source.width} "
                         f"values per row, the encoder takes {width}")
    if source.is_parquet:
        return UserError(f"{where} has {len(source.columns)} feature columns "
                         f"({_names(list(source.columns))}), the encoder takes {width}; give "
                         "exactly its feature columns (an id column with --ids-column)")
    return UserError(f"{where} has rows of shape {list(source.row_shape)}, the encoder takes "
                     f"rows of {width} values {list(raw_shape)}; give rows like those it was "
                     "trained on")


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
