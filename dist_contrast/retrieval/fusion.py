"""Hybrid retrieval: several rankings of the same queries (dense and BM25) fused into one.

Two rules. Reciprocal-rank fusion (Cormack et al. 2009) adds 1 / (rrf_k + rank) over the lists
a document is in, and needs no scores. The normalised-score sum rescales each list's scores to
[0, 1] per query (min-max) and adds them with weights (α and 1 − α for two lists).

A document missing from a list gets nothing from it. Equal fused scores keep the order in which
the documents are first met reading the lists in turn (the whole first list, then the second):
the first list breaks ties. Ids below 0 are padding and are skipped; a list naming a document
twice counts its first place only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from dist_contrast.retrieval.search import Ranking


def _checked(rankings: Sequence[Ranking], k: int) -> int:
    """The number of queries, once every ranking is seen to have the same."""
    if not rankings:
        raise ValueError("no rankings to fuse")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    queries = {len(ranking.ids) for ranking in rankings}
    if len(queries) != 1:
        raise ValueError(f"the rankings cover different numbers of queries: {sorted(queries)}")
    return queries.pop()


def _entries(ids: np.ndarray, values: np.ndarray) -> Iterator[tuple[int, int, float]]:
    """(rank from 1, id, value) of one query's list, padding and repeats left out."""
    seen: set[int] = set()
    for rank, (doc, value) in enumerate(zip(ids.tolist(), values.tolist(), strict=True), 1):
        if doc >= 0 and doc not in seen:
            seen.add(doc)
            yield rank, doc, value


def _best(fused: dict[int, float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of one query's fused scores, padded to k with id -1 and score -inf.

    Shape: -> ids [k] int64, scores [k] float32.
    """
    docs = np.fromiter(fused.keys(), dtype=np.int64, count=len(fused))
    values = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
    order = np.argsort(-values, kind="stable")[:k]  # stable: ties keep the order first met
    ids = np.full(k, -1, dtype=np.int64)
    scores = np.full(k, -np.inf, dtype=np.float32)
    ids[: len(order)], scores[: len(order)] = docs[order], values[order]
    return ids, scores


def _stack(rows: list[tuple[np.ndarray, np.ndarray]], k: int) -> Ranking:
    if not rows:
        return Ranking(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
    return Ranking(np.stack([ids for ids, _ in rows]), np.stack([scores for _, scores in rows]))


def reciprocal_rank_fusion(rankings: Sequence[Ranking], k: int, rrf_k: float = 60.0) -> Ranking:
    """Each query's k best documents by sum over lists of 1 / (rrf_k + rank), rank from 1.

    Shape: rankings: each ids [Q, K_i] (scores unused) -> Ranking [Q, k], padded with -1.
    """
    rows = []
    for query in range(_checked(rankings, k)):
        fused: dict[int, float] = {}
        for ranking in rankings:
            for rank, doc, _ in _entries(ranking.ids[query], ranking.scores[query]):
                fused[doc] = fused.get(doc, 0.0) + 1.0 / (rrf_k + rank)
        rows.append(_best(fused, k))
    return _stack(rows, k)


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scores rescaled to [0, 1] (min → 0, max → 1); all equal → all 0, since such a list says
    nothing about order.

    Shape: scores [K] -> [K] float64.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    low, spread = scores.min(), np.ptp(scores)
    return (scores - low) / spread if spread > 0 else np.zeros_like(scores)


def score_fusion(
    rankings: Sequence[Ranking], k: int, weights: Sequence[float] | None = None
) -> Ranking:
    """Each query's k best documents by the weighted sum of its min-max normalised scores
    (per query and list, over the list's real entries); equal weights unless given.

    Shape: rankings: each ids and scores [Q, K_i] -> Ranking [Q, k], padded with -1.
    """
    queries = _checked(rankings, k)
    weights = [1.0 / len(rankings)] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings: give one each")
    rows = []
    for query in range(queries):
        fused: dict[int, float] = {}
        for ranking, weight in zip(rankings, weights, strict=True):
            entries = list(_entries(ranking.ids[query], ranking.scores[query]))
            normalised = min_max(np.array([value for _, _, value in entries]))
            for (_, doc, _), value in zip(entries, normalised.tolist(), strict=True):
                fused[doc] = fused.get(doc, 0.0) + weight * value
        rows.append(_best(fused, k))
    return _stack(rows, k)
