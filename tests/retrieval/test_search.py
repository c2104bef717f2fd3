"""Dense search: exact = brute-force NumPy, the HNSW path's recall against exact, the NumPy
fallback without FAISS, and deterministic ties."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dist_contrast.retrieval import search
from dist_contrast.retrieval.search import (
    dense_search,
    exact_search,
    l2_normalize,
    numpy_search,
    top_k,
)


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((rows, dim)))


def _brute_force(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def test_top_k_breaks_ties_by_lower_id() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k(scores, 2).ids.tolist() == [[1, 2], [0, 1]]
    assert top_k(scores, 4).ids.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert top_k(scores, 9).scores.tolist()[0] == [3.0, 3.0, 3.0, 2.0, 1.0]  # k capped at N


def test_exact_search_equals_brute_force() -> None:
    queries, corpus = _unit(64, 24, 0), _unit(3000, 24, 1)
    ids, scores = _brute_force(queries, corpus, 20)
    faiss_result = exact_search(queries, corpus, 20)
    np.testing.assert_array_equal(faiss_result.ids, ids)
    np.testing.assert_allclose(faiss_result.scores, scores, atol=1e-5)
    # NumPy in blocks of 300 rows' scores (so 64 queries take 22 blocks) gives the same.
    blocked = numpy_search(queries, corpus, 20, block_bytes=300 * 4 * len(corpus) // 100)
    np.testing.assert_array_equal(blocked.ids, ids)
    np.testing.assert_allclose(blocked.scores, scores, atol=1e-5)


def test_dense_search_is_cosine() -> None:
    rng = np.random.default_rng(2)
    queries, corpus = rng.standard_normal((16, 8)), rng.standard_normal((500, 8))
    scales = rng.uniform(0.1, 10.0, (500, 1))
    result = dense_search(queries, corpus * scales, 10)  # lengths must not matter
    ids, scores = _brute_force(l2_normalize(queries), l2_normalize(corpus), 10)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_allclose(result.scores, scores, atol=1e-5)
    assert dense_search(queries, corpus, 600).ids.shape == (16, 500)  # k capped at N


def test_hnsw_above_the_threshold_recalls_the_exact_neighbours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Uniform random directions are the hard case for a graph index (no clusters to follow).
    queries, corpus = _unit(300, 32, 3), _unit(20_000, 32, 4)
    exact = exact_search(queries, corpus, 100)
    built: list[int] = []
    hnsw = search.hnsw_search

    def counted(*args: Any) -> search.Ranking:
        built.append(1)
        return hnsw(*args)

    monkeypatch.setattr(search, "hnsw_search", counted)
    approximate = dense_search(queries, corpus, 100, exact_below=10_000)
    assert built == [1]  # 20,000 rows >= exact_below: the graph, not the flat index
    assert approximate.ids.shape == (300, 100)
    for k in (10, 100):
        pairs = zip(approximate.ids, exact.ids, strict=True)
        found = [len(set(a[:k]) & set(e[:k])) / k for a, e in pairs]
        assert np.mean(found) >= 0.95, (k, np.mean(found))
    # Its scores are the true inner products of the ids it returns.
    true = np.einsum("qd,qkd->qk", queries, corpus[approximate.ids])
    np.testing.assert_allclose(approximate.scores, true, atol=1e-5)


def test_without_faiss_the_search_is_exact_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    queries, corpus = _unit(10, 8, 5), _unit(400, 8, 6)
    monkeypatch.setattr(search, "faiss", None)
    result = dense_search(queries, corpus, 5, exact_below=0)  # would be HNSW with FAISS
    np.testing.assert_array_equal(result.ids, _brute_force(queries, corpus, 5)[0])
    with pytest.raises(ValueError, match="approximate search needs FAISS"):
        search.hnsw_search(queries, corpus, 5)


@pytest.mark.parametrize(
    ("queries", "corpus", "k", "message"),
    [
        (np.zeros((2, 3)), np.zeros((4, 5)), 1, r"must be \[Q, D\] and \[N, D\]"),
        (np.zeros((2, 3)), np.zeros((0, 3)), 1, "the corpus is empty"),
        (np.zeros((2, 3)), np.zeros((4, 3)), 0, "k must be at least 1"),
        (np.zeros(3), np.zeros((4, 3)), 1, r"must be \[Q, D\]"),
    ],
)
def test_bad_input_is_refused(
    queries: np.ndarray, corpus: np.ndarray, k: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dense_search(queries, corpus, k)
