"""Paired text data: rows of (query, positive, hard negatives) from JSONL, CSV or parquet.

:func:`open_pairs` describes a file from its header, first line or parquet metadata, without
reading it whole: its format, columns, layout (which column is which side) and, for parquet,
its row count. :meth:`PairsFile.batches` streams :class:`PairBatch` es of checked rows (a
parquet file by row groups, JSONL and CSV a line at a time), optionally only one worker's
shard of them.

Column names (the layouts of sentence-transformers and of Tevatron/DPR):

* query: ``query`` or ``anchor``;
* positive: ``positive`` (a text) or ``positive_passages`` (a list; the first is the positive);
* hard negatives, any of: ``negative``, ``negative_1``, ``negative_2``... (one text each),
  ``negatives`` or ``negative_passages`` (a list each);
* optional: ``id`` (or ``query_id``) and ``label``.

A list holds texts, or objects with a ``text`` and an optional ``title`` (a passage: its text
is ``title + " " + text``). Either side may hold numeric feature rows instead of texts (two
modalities, as CLIP pairs text with images): a JSON array or a parquet list of numbers where a
text would be (a list of such rows in a list column), every row of a side the same width; the
side's values are then :class:`FeatureRow` s. A CSV cell holds
text only. Every mistake is one :class:`DataError` line naming the file, the
row (``line N`` of JSONL or CSV, 1-based, the CSV header being line 1; ``row N`` of parquet)
and the fix.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from dist_contrast.data.errors import DataError

QUERY_NAMES = ("query", "anchor")
POSITIVE_NAMES = ("positive", "positive_passages")
LIST_NEGATIVE_NAMES = ("negatives", "negative_passages")
ID_NAMES = ("id", "query_id")
LABEL_NAME = "label"
TITLE_SEPARATOR = " "
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
           ".parquet": "parquet"}
_NUMBERED_NEGATIVE = re.compile(r"negative_(\d+)")
_ACCEPTED = ("accepted: query/anchor, positive/positive_passages, and optional "
             "negative, negative_1.., negatives, negative_passages, id, label")
_ENCODING_FIX = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > NEW)"

Kind = Literal["text", "list"]
Format = Literal["jsonl", "csv", "parquet"]
Label = int | float | str | bool


class FeatureRow(bytes):
    """One numeric feature row: its float32 bytes (compact, hashable and comparable, so a
    corpus of rows de-duplicates as one of texts does). The text encoders take such rows."""

    @classmethod
    def of(cls, values: Any) -> FeatureRow:
        return cls(np.asarray(values, dtype=np.float32).tobytes())

    @property
    def width(self) -> int:
        return len(self) // 4

    @property
    def vector(self) -> np.ndarray:
        """Shape: [width] float32."""
        return np.frombuffer(self, dtype=np.float32)

    def __repr__(self) -> str:
        return f"FeatureRow({self.width} numbers)"


#: One side's value in a row: a text, or a numeric feature row.
Item = str | FeatureRow


@dataclass(frozen=True)
class Column:
    """One column of a side: a text (or feature row) per row, or a list of them per row."""

    name: str
    kind: Kind


@dataclass(frozen=True)
class PairsLayout:
    """Which column holds what. ``negatives``: in order (``negative``, ``negative_1``...,
    then the list columns); a row's negatives are all of theirs, concatenated."""

    query: Column
    positive: Column
    negatives: tuple[Column, ...] = ()
    id: str | None = None
    label: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        names = [self.query.name, self.positive.name, *(c.name for c in self.negatives)]
        return (*names, *(name for name in (self.id, self.label) if name is not None))

    @property
    def negatives_per_row(self) -> int | None:
        """The fixed count of negatives per row, None when a list column makes it vary."""
        if any(column.kind == "list" for column in self.negatives):
            return None
        return len(self.negatives)


@dataclass
class PairBatch:
    """Consecutive rows of one shard. ``row``: each row's 0-based index in the file.

    ``id`` and ``label`` are None when the file has no such column.
    Shape: every list has the batch's length; ``negatives[i]`` holds row i's negatives.
    """

    query: list[Item] = field(default_factory=list)
    positive: list[Item] = field(default_factory=list)
    negatives: list[list[Item]] = field(default_factory=list)
    id: list[str] | None = None
    label: list[Label] | None = None
    row: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.query)


@dataclass(frozen=True)
class PairsFile:
    """A file of pairs, described without reading its rows (see the module docstring).

    ``num_rows``: known for parquet (its metadata); None for JSONL and CSV, where only a
    scan counts them (:meth:`count_rows`).
    """

    path: str
    format: Format
    columns: tuple[str, ...]
    layout: PairsLayout
    num_rows: int | None = None

    def batches(self, batch_rows: int = 1024, *, rank: int = 0,
                world_size: int = 1) -> Iterator[PairBatch]:
        """Checked rows, ``batch_rows`` at a time (the last batch may be shorter), in file order.

        With ``world_size`` > 1 only shard ``rank`` is read: a parquet file's rows
        ``[rank·N/W, (rank+1)·N/W)`` (only the row groups holding them are read); every
        ``world_size``-th row of JSONL or CSV from row ``rank`` (the file is scanned, only the
        shard's rows are decoded and checked). The shards cover every row exactly once, and
        their sizes differ by at most one. No more than one batch is held at a time.
        """
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be positive, got {batch_rows}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        checker = _RowChecker(self.path, self.layout)
        batch = checker.empty_batch()
        for row, where, record in self._records(rank, world_size, batch_rows):
            checker.add(batch, row, where, record)
            if len(batch) == batch_rows:
                yield batch
                batch = checker.empty_batch()
        if len(batch):
            yield batch

    def shard(self, rank: int, world_size: int, num_rows: int) -> range:
        """The rows (0-based, of ``num_rows``) that :meth:`batches` reads for shard ``rank``."""
        if self.format == "parquet":
            return range(rank * num_rows // world_size, (rank + 1) * num_rows // world_size)
        return range(rank, num_rows, world_size)

    def validate(self, batch_rows: int = 4096) -> int:
        """Read and check every row (one ``DataError`` line at the first mistake, or for a
        file without rows); the number of rows."""
        rows = sum(len(batch) for batch in self.batches(batch_rows))
        if rows == 0:
            raise DataError(self.path, "the file holds no rows", "write the pairs into it")
        return rows

    def feature_widths(self) -> dict[str, int]:
        """The sides (``query``, ``document``) that hold numeric feature rows, and their width,
        as the first row has them (:meth:`validate` holds every row to it)."""
        for batch in self.batches(1):
            return {side: value.width for side, value in
                    (("query", batch.query[0]), ("document", batch.positive[0]))
                    if isinstance(value, FeatureRow)}
        return {}

    def count_rows(self) -> int:
        """The rows of the file: the metadata's count for parquet, a scan for JSONL and CSV."""
        if self.num_rows is not None:
            return self.num_rows
        if self.format == "jsonl":
            with _open_binary(self.path) as handle:
                return sum(1 for line in handle if line.strip())
        return sum(1 for _ in _csv_records(self.path))

    def _records(self, rank: int, world_size: int,
                 batch_rows: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(row index, "line N"/"row N", the row's values by column) of the shard's rows."""
        if self.format == "jsonl":
            yield from _jsonl_records(self.path, rank, world_size)
        elif self.format == "csv":
            header = list(self.columns)
            for row, (line, values) in enumerate(_csv_records(self.path)):
                if row % world_size == rank:
                    if len(values) != len(header):
                        raise DataError(self.path, f"line {line} has {len(values)} fields and "
                                        f"the header {len(header)}",
                                        "quote fields that hold commas, quotes or newlines")
                    yield row, f"line {line}", dict(zip(header, values, strict=True))
        else:
            yield from _parquet_records(self.path, self.layout.columns,
                                        self.shard(rank, world_size, self.num_rows or 0),
                                        batch_rows)


def open_pairs(
    path: str | Path, *, query_column: str | None = None, positive_column: str | None = None
) -> PairsFile:
    """Describe a pairs file from its first line, CSV header or parquet metadata.

    ``query_column``/``positive_column`` name the sides when the file uses other names (a
    text column each). Raises ``DataError`` (one line) for a missing, unreadable, foreign or
    empty file, a file that is not UTF-8, and a missing or ambiguous column.
    """
    path = str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, f"unsupported extension {suffix or '(none)'!r} for a pairs file",
                        "save the pairs as .jsonl (one JSON object per line), .csv or .parquet")
    fmt: Format = FORMATS[suffix]  # type: ignore[assignment]
    _check_readable(path)
    num_rows: int | None = None
    if fmt == "parquet":
        columns, types, num_rows = _parquet_schema(path)
    elif fmt == "csv":
        columns, types = _csv_header(path), {}
    else:
        columns, types = _jsonl_columns(path), {}
    layout = _layout(path, fmt, columns, query_column, positive_column)
    for column in layout.columns:
        if column in types:
            _check_parquet_type(path, column, types[column], layout)
    return PairsFile(path, fmt, tuple(columns), layout, num_rows)


# --- layout -----------------------------------------------------------------------------------


def _layout(path: str, fmt: Format, columns: Sequence[str], query_column: str | None,
            positive_column: str | None) -> PairsLayout:
    query = _one_of(path, columns, (query_column,) if query_column else QUERY_NAMES, "query")
    positive = _one_of(path, columns, (positive_column,) if positive_column else POSITIVE_NAMES,
                       "positive")
    numbered = sorted((int(match.group(1)), name) for name in columns
                      if (match := _NUMBERED_NEGATIVE.fullmatch(name)))
    negatives = [Column(name, "text") for name in ("negative",) if name in columns]
    negatives += [Column(name, "text") for _, name in numbered]
    negatives += [Column(name, "list") for name in LIST_NEGATIVE_NAMES if name in columns]
    positive_kind: Kind = "list" if positive == "positive_passages" else "text"
    if fmt == "csv" and (positive_kind == "list" or any(c.kind == "list" for c in negatives)):
        listed = positive if positive_kind == "list" else next(
            c.name for c in negatives if c.kind == "list")
        raise DataError(path, f"column {listed!r} holds lists, which a CSV cell cannot",
                        "give one text per column (positive, negative_1, negative_2, ...) or "
                        "save the file as .jsonl or .parquet")
    ids = [name for name in ID_NAMES if name in columns]
    return PairsLayout(Column(query, "text"), Column(positive, positive_kind), tuple(negatives),
                       ids[0] if ids else None, LABEL_NAME if LABEL_NAME in columns else None)


def _one_of(path: str, columns: Sequence[str], names: Sequence[str], side: str) -> str:
    found = [name for name in names if name in columns]
    if not found:
        raise DataError(path, f"no {side} column among the columns {_list(columns)}",
                        f"name it {' or '.join(repr(n) for n in names)} ({_ACCEPTED})")
    if len(found) > 1:
        raise DataError(path, f"both {found[0]!r} and {found[1]!r} could be the {side} column",
                        "keep one of them (rename or drop the other)")
    return found[0]


def _list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return (shown or "(none)") + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --- row checks -------------------------------------------------------------------------------


class _RowChecker:
    """Turns one row's values into checked texts, id and label (``DataError`` otherwise)."""

    def __init__(self, path: str, layout: PairsLayout) -> None:
        self.path = path
        self.layout = layout
        self.types: dict[str, str] = {}  # the first id/label type seen, for "mixed types"
        # Each side's kind as the first row has it: "text" or a feature row's width.
        self.kinds: dict[str, str | int] = {}
        self.rows = 0

    def empty_batch(self) -> PairBatch:
        return PairBatch(id=[] if self.layout.id else None,
                         label=[] if self.layout.label else None)

    def add(self, batch: PairBatch, row: int, where: str, record: dict[str, Any]) -> None:
        layout = self.layout
        query = self._item(where, layout.query.name,
                           self._value(where, record, layout.query.name), "query")
        positive = self._side(where, layout.positive, record)[0]
        negatives = [item for column in layout.negatives
                     for item in self._side(where, column, record)]
        for item in negatives:
            if _same(item, positive):
                raise DataError(self.path, f"{where}: a negative equals the row's own positive",
                                "remove it: a hard negative must be a different "
                                f"{'text' if isinstance(item, str) else 'row'}")
        batch.query.append(query)
        batch.positive.append(positive)
        batch.negatives.append(negatives)
        batch.row.append(row)
        if batch.id is not None and layout.id is not None:
            batch.id.append(str(self._scalar(where, layout.id, record, (str, int))))
        if batch.label is not None and layout.label is not None:
            batch.label.append(self._scalar(where, layout.label, record, (int, float, str, bool)))
        self.rows += 1

    def _value(self, where: str, record: dict[str, Any], name: str) -> Any:
        if name not in record:
            raise DataError(self.path, f"{where} has no {name!r}",
                            f"give every row a {name!r} (the first row has one)")
        return record[name]

    def _side(self, where: str, column: Column, record: dict[str, Any]) -> list[Item]:
        """A document column's values: one text or row, or a list column's."""
        value = self._value(where, record, column.name)
        if column.kind == "text":
            return [self._item(where, column.name, value, "document")]
        if not isinstance(value, list):
            raise DataError(self.path, f"{where}: {column.name!r} is {_kind(value)}, not a list",
                            f"give {column.name!r} as a list of texts or of "
                            '{"text": ..., "title": ...} objects in every row')
        texts = [self._passage(where, column.name, item) for item in value]
        if column == self.layout.positive and not texts:
            raise DataError(self.path, f"{where}: {column.name!r} is an empty list",
                            "give at least one positive passage per row, or drop the row")
        return texts

    def _item(self, where: str, name: str, value: Any, side: str) -> Item:
        """A text, or a numeric feature row; every row's ``side`` holds the same kind."""
        item: Item
        if is_feature_row(value):
            vector = np.asarray(value, dtype=np.float64)
            if not np.isfinite(vector).all() or np.abs(vector).max() > np.finfo(np.float32).max:
                raise DataError(self.path, f"{where}: {name!r} holds NaN, infinity or a number "
                                "beyond float32", "give finite numbers in every feature row")
            item = FeatureRow.of(vector)
        else:
            item = self._text(where, name, value)
        kind: str | int = "text" if isinstance(item, str) else item.width
        first = self.kinds.setdefault(side, kind)
        if kind != first:
            raise DataError(self.path, f"{where}: {name!r} is {_kind_words(kind)} and the "
                            f"rows before hold {_kind_words(first)} on the {side} side",
                            f"give every row's {side} side the same kind: text, or feature "
                            "rows of one width")
        return item

    def _passage(self, where: str, name: str, item: Any) -> Item:
        if is_feature_row(item):
            return self._item(where, f"{name}[]", item, "document")
        if isinstance(item, dict):
            if "text" not in item:
                raise DataError(self.path, f"{where}: an entry of {name!r} has no 'text'",
                                'give each passage as {"text": ..., "title": ...}')
            text = self._text(where, f"{name}[].text", item["text"])
            title = item.get("title")
            if title is None or title == "":
                return text
            return self._text(where, f"{name}[].title", title) + TITLE_SEPARATOR + text
        return self._item(where, f"{name}[]", item, "document")

    def _text(self, where: str, name: str, value: Any) -> str:
        if isinstance(value, str):
            if value.strip():
                return value
            raise DataError(self.path, f"{where}: {name!r} is an empty text",
                            "give every text some content, or drop the row")
        if value is None:
            raise DataError(self.path, f"{where}: {name!r} is null (no text)",
                            "give every text some content, or drop the row")
        mixed = " (mixed types: the rows before hold text)" if self.rows else ""
        raise DataError(self.path, f"{where}: {name!r} is {_kind(value)}, not text{mixed}",
                        f"give {name!r} as a string in every row")

    def _scalar(self, where: str, name: str, record: dict[str, Any],
                allowed: tuple[type, ...]) -> Any:
        value = self._value(where, record, name)
        if value is None or not isinstance(value, allowed) or (
                isinstance(value, float) and value != value):
            raise DataError(self.path, f"{where}: {name!r} is {_kind(value)}",
                            f"give every row's {name!r} as one of "
                            f"{', '.join(t.__name__ for t in allowed)}")
        first = self.types.setdefault(name, _scalar_kind(value))
        if first != _scalar_kind(value):
            raise DataError(self.path, f"{where}: mixed types in {name!r} ({_scalar_kind(value)}"
                            f" here, {first} in the rows before)",
                            f"give every row's {name!r} the same type")
        return value


def is_feature_row(value: Any) -> bool:
    """A non-empty list of numbers (booleans are not numbers here): a feature row."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def _kind_words(kind: str | int) -> str:
    return "text" if kind == "text" else f"a feature row of {kind} numbers"


def _same(a: Item, b: Item) -> bool:
    """Whether a negative repeats the positive (texts compared without their outer spaces)."""
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


def _scalar_kind(value: Any) -> str:
    """An id's or label's type, ints and floats alike (1 and 0.5 are both scores)."""
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else "string"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# --- files ------------------------------------------------------------------------------------


def _check_readable(path: str) -> None:
    file = Path(path)
    if not file.exists():
        raise DataError(path, "file not found",
                        "check the path (relative paths start at the working directory)")
    if not file.is_file():
        raise DataError(path, "is a folder, not a file", "name the pairs file itself")
    try:
        with open(file, "rb") as handle:
            start = handle.read(4)
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or type(error).__name__})",
                        "check the file's permissions") from error
    if not start:
        raise DataError(path, "the file is empty (0 bytes)", "write the pairs into it")
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(path, "the file is UTF-16 encoded, not UTF-8",
                        "save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8 FILE > NEW)")


def _open_binary(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror or type(error).__name__})",
                        "check the file's permissions") from error


def _decode(path: str, raw: bytes, line: int) -> str:
    if line == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(path, f"line {line} is not UTF-8 (byte 0x{raw[error.start]:02x} at "
                        f"column {error.start + 1})", _ENCODING_FIX) from error


def _lines(path: str) -> Generator[tuple[int, str], None, None]:
    """(1-based line number, decoded line with its newline) of a text file."""
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, _decode(path, raw, number)


def _json_object(path: str, text: str, line: int) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"line {line} is not valid JSON ({error.msg} at column "
                        f"{error.colno})", "write one JSON object per line (JSON Lines)") from error
    if not isinstance(value, dict):
        hint = " (a JSON array file? write one object per line)" if text.lstrip()[:1] == "[" \
            else ""
        raise DataError(path, f"line {line} is {_kind(value)}, not a JSON object{hint}",
                        'write one object per line, e.g. {"query": ..., "positive": ...}')
    return value


def _jsonl_columns(path: str) -> list[str]:
    with contextlib.closing(_lines(path)) as lines:
        for line, text in lines:
            if text.strip():
                return list(_json_object(path, text, line))
    raise DataError(path, "the file holds no rows (only blank lines)", "write the pairs into it")


def _jsonl_records(path: str, rank: int,
                   world_size: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
    row = -1
    with _open_binary(path) as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            row += 1
            if row % world_size == rank:  # others' rows are neither decoded nor parsed
                yield row, f"line {line}", _json_object(path, _decode(path, raw, line), line)


def _csv_records(path: str) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, its fields) of every data row (the header skipped)."""
    # Code and passages run longer than csv's default 128 KiB field limit (process-wide).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader((text for _, text in _lines(path)), strict=True)
    first = True
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(path, f"line {start} is not valid CSV ({error})",
                            "quote fields that hold commas, quotes or newlines") from error
        if first:
            first = False
            continue
        if values:  # a blank line
            yield start, values


def _csv_header(path: str) -> list[str]:
    with contextlib.closing(_lines(path)) as lines:
        try:
            header = next(csv.reader(text for _, text in lines))
        except StopIteration:
            header = []
        except csv.Error as error:
            raise DataError(path, f"line 1 is not a valid CSV header ({error})",
                            "write the column names on the first line") from error
    if not header:
        raise DataError(path, "the first line holds no column names",
                        "write the column names on the first line")
    return header


def _parquet_schema(path: str) -> tuple[list[str], dict[str, Any], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(path, f"not a readable parquet file ({type(error).__name__})",
                        "write it with pandas.DataFrame.to_parquet or pyarrow") from error
    schema = parquet.schema_arrow
    types = {name: schema.field(name).type for name in schema.names}
    return list(schema.names), types, int(parquet.metadata.num_rows)


def _check_parquet_type(path: str, name: str, arrow_type: Any, layout: PairsLayout) -> None:
    import pyarrow as pa

    def is_text(t: Any) -> bool:
        if pa.types.is_dictionary(t):
            t = t.value_type
        return bool(pa.types.is_string(t) or pa.types.is_large_string(t))

    def is_list(t: Any) -> bool:
        return bool(pa.types.is_list(t) or pa.types.is_large_list(t)
                    or pa.types.is_fixed_size_list(t))

    def is_row(t: Any) -> bool:  # a list of numbers
        value = getattr(t, "value_type", None)
        return is_list(t) and value is not None and bool(
            pa.types.is_integer(value) or pa.types.is_floating(value))

    if name == layout.id:
        ok = is_text(arrow_type) or pa.types.is_integer(arrow_type)
        wanted = "strings or integers"
    elif name == layout.label:
        ok = (is_text(arrow_type) or pa.types.is_integer(arrow_type)
              or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type))
        wanted = "numbers, strings or booleans"
    elif any(c.name == name and c.kind == "list" for c in (layout.positive, *layout.negatives)):
        value = getattr(arrow_type, "value_type", None)
        ok = is_list(arrow_type) and value is not None and (
            is_text(value) or (pa.types.is_struct(value) and value.get_field_index("text") >= 0)
            or is_row(value))
        wanted = "lists of texts, of {text, title} structs or of feature rows (lists of numbers)"
    else:
        ok = is_text(arrow_type) or is_row(arrow_type)
        wanted = "texts or feature rows (lists of numbers)"
    if not ok:
        raise DataError(path, f"column {name!r} has type {arrow_type}, not {wanted}",
                        f"store {name!r} as {wanted}")


def _parquet_records(path: str, columns: Iterable[str], rows: range, batch_rows: int
                     ) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """The consecutive ``rows``, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    start, stop = rows.start, rows.stop
    parquet = pq.ParquetFile(path)
    first = 0  # the row group's first row
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        if first + size > start and first < stop:
            offset = first
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group],
                                              columns=list(columns)):
                for index, record in enumerate(batch.to_pylist(), start=offset):
                    if start <= index < stop:
                        yield index, f"row {index + 1}", record
                offset += batch.num_rows
        first += size
        if first >= stop:
            return
