"""Dense retrieval: each query's top-k corpus rows by cosine similarity.

Rows are L2-normalised, so the inner product is the cosine. Below ``exact_below`` corpus rows the
search is exact (a FAISS flat index, or NumPy in blocks where FAISS cannot be imported); from
there on it is an approximate FAISS HNSW graph, whose recall against the exact search the tests
measure.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

try:
    import faiss
except ImportError:  # faiss-cpu is a dependency; a missing or broken build still searches exactly
    faiss = None  # type: ignore[assignment]

DEFAULT_EXACT_BELOW = 100_000


class Ranking(NamedTuple):
    """Each query's documents, best first.

    Shape: ids [Q, k] int64 (-1 pads a query with fewer than k results),
    scores [Q, k] float32 (-inf where padded).
    """

    ids: np.ndarray
    scores: np.ndarray


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero), as contiguous float32.

    Shape: rows [N, D] -> [N, D].
    """
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.maximum(norms, np.finfo(np.float32).tiny))


def top_k(scores: np.ndarray, k: int) -> Ranking:
    """The k highest scores of each row, best first; equal scores in increasing id order, so the
    result does not depend on how a partial sort broke ties.

    Shape: scores [Q, N] -> Ranking with ids and scores [Q, min(k, N)].
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    scores = np.asarray(scores, dtype=np.float32)
    rows, columns = scores.shape
    k = min(k, columns)
    ids = np.empty((rows, k), dtype=np.int64)
    # The k-th largest score of each row: everything above it is in, ties with it by lowest id.
    kth = np.partition(scores, columns - k, axis=1)[:, columns - k]
    for row in range(rows):
        candidates = np.flatnonzero(scores[row] >= kth[row])
        order = np.lexsort((candidates, -scores[row, candidates]))[:k]
        ids[row] = candidates[order]
    return Ranking(ids, np.take_along_axis(scores, ids, axis=1))


def _checked(queries: np.ndarray, corpus: np.ndarray, k: int) -> None:
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"queries {queries.shape} and corpus {corpus.shape} must be [Q, D] and [N, D], one D"
        )
    if corpus.shape[0] == 0:
        raise ValueError("the corpus is empty: nothing to search")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")


def numpy_search(
    queries: np.ndarray, corpus: np.ndarray, k: int, block_bytes: int = 2**28
) -> Ranking:
    """Exact inner-product top-k in NumPy, a block of queries at a time (``block_bytes`` of
    float32 scores per block).

    Shape: queries [Q, D], corpus [N, D] -> Ranking [Q, min(k, N)].
    """
    _checked(queries, corpus, k)
    block = max(1, block_bytes // (4 * corpus.shape[0]))
    parts = [top_k(queries[i : i + block] @ corpus.T, k) for i in range(0, len(queries), block)]
    if not parts:
        width = min(k, len(corpus))
        return Ranking(np.empty((0, width), np.int64), np.empty((0, width), np.float32))
    ids, scores = zip(*parts, strict=True)
    return Ranking(np.concatenate(ids), np.concatenate(scores))


def _faiss_ranking(index: Any, queries: np.ndarray, k: int) -> Ranking:
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return Ranking(ids.astype(np.int64), scores)


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int) -> Ranking:
    """Exact inner-product top-k: a FAISS flat index, or NumPy where FAISS is missing.

    Shape: queries [Q, D], corpus [N, D] -> Ranking [Q, min(k, N)].
    """
    _checked(queries, corpus, k)
    if faiss is None:
        return numpy_search(queries, corpus, k)
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    return _faiss_ranking(index, queries, min(k, corpus.shape[0]))


def hnsw_search(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    m: int = 32,
    ef_construction: int = 40,
    ef_search: int = 128,
) -> Ranking:
    """Approximate inner-product top-k through a FAISS HNSW graph of ``m`` links per node.

    The search explores at least ``max(ef_search, 2k)`` candidates: fewer than k could not
    return k, and recall at k falls when the beam is barely wider than k.

    Shape: queries [Q, D], corpus [N, D] -> Ranking [Q, min(k, N)] (-1 where it found fewer).
    """
    _checked(queries, corpus, k)
    if faiss is None:
        raise ValueError("approximate search needs FAISS: pip install faiss-cpu")
    index = faiss.IndexHNSWFlat(corpus.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    index.hnsw.efSearch = max(ef_search, 2 * k)
    return _faiss_ranking(index, queries, min(k, corpus.shape[0]))


def dense_search(
    queries: np.ndarray,
    corpus: np.ndarray,
    k: int,
    exact_below: int = DEFAULT_EXACT_BELOW,
    normalize: bool = True,
) -> Ranking:
    """Each query's top-k corpus rows by cosine (inner product when ``normalize`` is False):
    exact below ``exact_below`` corpus rows (or without FAISS), HNSW from there on.

    Shape: queries [Q, D], corpus [N, D] -> Ranking [Q, min(k, N)], ids are corpus rows.
    """
    queries = np.asarray(queries, dtype=np.float32)
    corpus = np.asarray(corpus, dtype=np.float32)
    _checked(queries, corpus, k)
    if normalize:
        queries, corpus = l2_normalize(queries), l2_normalize(corpus)
    if corpus.shape[0] < exact_below or faiss is None:
        return exact_search(queries, corpus, k)
    return hnsw_search(queries, corpus, k)
