"""Ranking metrics of a retrieval run: MRR@k, Recall@k and nDCG@k with binary relevance.

Every function takes, for each query, the document ids in ranked order (best first) and the set
of ids relevant to it (one or several). Ids below 0 are padding (an approximate index that found
fewer than k documents) and are never relevant. A document listed twice counts once, at its
first position. A ranking shorter than k is scored as it is, as when the corpus holds fewer than
k documents: retrieve at least the largest k you report.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType

import numpy as np

# One ranking per query: a list of id lists, or an int array [Q, K] (padded with -1).
Ranked = Sequence[Sequence[int]] | np.ndarray

DEFAULT_KS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"mrr": (10,), "recall": (1, 10, 100), "ndcg": (10,)}
)


def _hit_ranks(ranking: Sequence[int] | np.ndarray, relevant: Collection[int], k: int) -> list[int]:
    """1-based positions, within the first k, of the relevant documents (each one once)."""
    seen: set[int] = set()
    ranks = []
    head = ranking[:k]
    for position, doc in enumerate(head.tolist() if isinstance(head, np.ndarray) else head, 1):
        if doc >= 0 and doc in relevant and doc not in seen:
            seen.add(doc)
            ranks.append(position)
    return ranks


def _checked(ranked: Ranked, relevant: Sequence[Collection[int]], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevant sets: one per query")
    if len(relevant) == 0:
        raise ValueError("no queries: the metrics of an empty evaluation are undefined")
    empty = [i for i, docs in enumerate(relevant) if len(docs) == 0]
    if empty:
        raise ValueError(f"query {empty[0]} has no relevant document; drop it or give its ids")


def mrr_at_k(ranked: Ranked, relevant: Sequence[Collection[int]], k: int = 10) -> float:
    """Mean reciprocal rank: the mean over queries of 1/rank of the first relevant document
    within the first k, 0 for a query with none there.

    Shape: ranked [Q, K] ids (or Q lists); relevant: Q sets.
    """
    _checked(ranked, relevant, k)
    reciprocal = [
        1.0 / ranks[0] if (ranks := _hit_ranks(ranking, docs, k)) else 0.0
        for ranking, docs in zip(ranked, relevant, strict=True)
    ]
    return float(np.mean(reciprocal))


def recall_at_k(ranked: Ranked, relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean over queries of the fraction of its relevant documents found within the first k.

    Shape: ranked [Q, K] ids (or Q lists); relevant: Q sets.
    """
    _checked(ranked, relevant, k)
    recalls = [
        len(_hit_ranks(ranking, docs, k)) / len(docs)
        for ranking, docs in zip(ranked, relevant, strict=True)
    ]
    return float(np.mean(recalls))


def ndcg_at_k(ranked: Ranked, relevant: Sequence[Collection[int]], k: int = 10) -> float:
    """Mean normalised discounted cumulative gain with binary relevance and a log2 discount.

    DCG@k = sum over relevant hits at rank r <= k of 1 / log2(r + 1); it is divided by the DCG
    of a perfect ranking, whose min(|relevant|, k) first places are all relevant.

    Shape: ranked [Q, K] ids (or Q lists); relevant: Q sets.
    """
    _checked(ranked, relevant, k)
    gains = []
    for ranking, docs in zip(ranked, relevant, strict=True):
        dcg = sum(1.0 / math.log2(rank + 1) for rank in _hit_ranks(ranking, docs, k))
        ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(docs), k) + 1))
        gains.append(dcg / ideal)
    return float(np.mean(gains))


_METRICS = {"mrr": mrr_at_k, "recall": recall_at_k, "ndcg": ndcg_at_k}


def retrieval_metrics(
    ranked: Ranked,
    relevant: Sequence[Collection[int]],
    ks: Mapping[str, Sequence[int]] = DEFAULT_KS,
) -> dict[str, float]:
    """Every metric of ``ks`` at each of its cut-offs, keyed ``name@k``.

    The default gives mrr@10, recall@1, recall@10, recall@100 and ndcg@10.

    Shape: ranked [Q, K] ids (or Q lists); relevant: Q sets.
    """
    unknown = sorted(set(ks) - set(_METRICS))
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {sorted(_METRICS)}")
    return {f"{name}@{k}": _METRICS[name](ranked, relevant, k) for name in ks for k in ks[name]}
