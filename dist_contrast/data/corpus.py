"""A corpus file: one document per row, with an ``id`` and a ``text`` (.jsonl or .parquet).

What ``dist-contrast mine --corpus`` and ``negatives.corpus.file`` search. Every id must be
present and distinct and every text a string; a mistake is one :class:`DataError` line naming
the file, the row and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from dist_contrast.data.errors import DataError

CORPUS_SUFFIXES = (".jsonl", ".parquet")


def corpus_columns(path: str | Path) -> set[str]:
    """The columns of a corpus (or pairs) file: a parquet file's schema, a JSONL file's first
    row's keys."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return set(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several kinds for a file that is not parquet
            raise DataError(path, f"not a readable parquet file "
                            f"({str(exc).splitlines()[0][:120]})", "check the file") from None
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        row = json.loads(first) if first else {}
    except ValueError:
        raise DataError(path, "its first line is not JSON",
                        "give one JSON object per line") from None
    return set(row) if isinstance(row, dict) else set()


def read_corpus_file(path: str | Path) -> tuple[list[str], list[str]]:
    """The texts and ids of a corpus file, in file order."""
    path = Path(path)
    if path.suffix.lower() not in CORPUS_SUFFIXES:
        raise DataError(path, "a corpus must be a .jsonl or .parquet file",
                        "give one row of id and text per document")
    if not path.is_file():
        raise DataError(path, "not found (or not a file)", "check the path")
    columns = corpus_columns(path)
    for column, fix in (("text", "give one text per document"),
                        ("id", "give every document an id")):
        if column not in columns:
            raise DataError(path, f"has no '{column}' column (it has {sorted(columns)[:8]})",
                            fix)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["id", "text"])
        raw_ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
        where = [f"row {i}" for i in range(len(texts))]
    else:
        raw_ids, texts, where = _jsonl_rows(path)
    seen: dict[str, str] = {}
    for place, doc_id, text in zip(where, raw_ids, texts, strict=True):
        if doc_id is None:
            raise DataError(path, f"{place} has no id", "give every document an id")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, f"{place}: 'text' is not a non-empty text",
                            "give every document its text")
        if str(doc_id) in seen:
            raise DataError(path, f"{place} repeats the id {str(doc_id)!r} of {seen[str(doc_id)]}",
                            "give every document its own id")
        seen[str(doc_id)] = place
    if not texts:
        raise DataError(path, "holds no documents", "give one row of id and text per document")
    return list(texts), [str(doc_id) for doc_id in raw_ids]


def _jsonl_rows(path: Path) -> tuple[list[object], list[object], list[str]]:
    ids: list[object] = []
    texts: list[object] = []
    where: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(path, "is not UTF-8 text", "convert it to UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(path, f"line {number} is not JSON",
                            "give one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(path, f"line {number} is not a JSON object",
                            "give one object of id and text per line")
        ids.append(row.get("id"))
        texts.append(row.get("text"))
        where.append(f"line {number}")
    return ids, texts, where
