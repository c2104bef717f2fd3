"""``dist-contrast search``: a text encoder's checkpoint answers queries over a corpus file.

The corpus is embedded once by the document tower and kept beside the checkpoint
(``search/<digest>.npy``, the digest of the corpus file's bytes and its text column), so a
second search of the same corpus embeds only the query. The search is FAISS's, exact or HNSW
by the corpus size (:func:`dist_contrast.retrieval.dense_search`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_contrast.errors import UserError
from dist_contrast.models.text import TextEncoder
from dist_contrast.retrieval import dense_search
from dist_contrast.serving.text import embedding_array, read_texts_and_ids, save_npy
from dist_contrast.train import storage

CACHE_FOLDER = "search"
#: The text column of a .jsonl corpus when none is named: the first of these its first row has.
CORPUS_COLUMNS = ("text", "positive", "document")


@dataclass(frozen=True)
class Hit:
    """One result: the corpus row, its score (cosine similarity), its id and its text."""

    row: int
    score: float
    id: str | None
    text: str  # a feature row's: "[N numbers]"


def checkpoint_of(source: str) -> str:
    """``source`` itself when it is a checkpoint folder; a run folder's newest complete
    checkpoint otherwise (the one-line refusals of the loader cover the rest)."""
    path = Path(source)
    if (path / storage.MARKER).is_file() or not path.is_dir():
        return source
    newest = storage.newest_complete(str(path))
    return newest.path if newest is not None else source


def corpus_column(path: Path, column: str | None) -> str:
    """The text column of a .jsonl corpus: ``column``, or the first of
    :data:`CORPUS_COLUMNS` its first row holds."""
    if column is not None or path.suffix.lower() != ".jsonl":
        return column or "text"
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        row = json.loads(first)
    except ValueError:
        return "text"  # read_texts names the line
    found = [name for name in CORPUS_COLUMNS if isinstance(row, dict) and name in row]
    return found[0] if found else "text"


def corpus_embeddings(encoder: TextEncoder, checkpoint: str, corpus: Path, column: str,
                      texts: list[Any], *, progress: bool | None = None) -> tuple[np.ndarray, bool]:
    """The document tower's embeddings of ``texts`` and whether they came from the cache
    beside ``checkpoint`` (written there, whole or not at all, when they did not).

    Shape: -> [len(texts), embedding_dim] float32.
    """
    digest = hashlib.sha256()
    with corpus.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(b"\0" + column.encode())
    cache = Path(checkpoint) / CACHE_FOLDER / f"{digest.hexdigest()[:24]}.npy"
    if cache.is_file():
        with contextlib.suppress(OSError, ValueError):
            kept = np.load(cache)
            if kept.shape == (len(texts), encoder.embedding_dim):
                return kept, True
    vectors = embedding_array(encoder, texts, "document", progress=progress)
    with contextlib.suppress(OSError):  # a read-only checkpoint: searched, nothing kept
        cache.parent.mkdir(exist_ok=True)
        save_npy(vectors, cache)
    return vectors, False


def search(encoder: TextEncoder, corpus_vectors: np.ndarray, texts: list[Any],
           ids: list[str | None], queries: list[str], k: int) -> list[list[Hit]]:
    """Each query's ``k`` best corpus rows by cosine similarity, best first."""
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    with torch.inference_mode():
        embedded = encoder(queries, side="query").float().numpy()
    ranking = dense_search(embedded, corpus_vectors, min(k, len(texts)))
    results = []
    for row_ids, row_scores in zip(ranking.ids, ranking.scores, strict=True):
        results.append([Hit(int(r), float(s), ids[r], _shown(texts[r]))
                        for r, s in zip(row_ids, row_scores, strict=True) if r >= 0])
    return results


def _shown(item: Any) -> str:
    return item if isinstance(item, str) else f"[{len(item)} numbers]"


def corpus_texts(path: str | Path, column: str | None) -> tuple[list[Any], list[str | None], str]:
    """The corpus' texts, ids and text column. Raises ``UserError`` for a bad file."""
    corpus = Path(path)
    if corpus.suffix.lower() not in (".txt", ".jsonl"):
        raise UserError(f"--corpus '{corpus}' must be a .txt file (one document per line) or a "
                        ".jsonl file (--column names the text)")
    if not corpus.is_file():
        raise UserError(f"--corpus '{corpus}' not found (or not a file); check the path")
    name = corpus_column(corpus, column)
    texts, ids = read_texts_and_ids(corpus, name)
    return texts, ids, name
