"""MRR@k, Recall@k and nDCG@k against hand-computed values, an independent nDCG (scikit-learn)
and the properties every ranking metric must have."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from dist_contrast.retrieval import mrr_at_k, ndcg_at_k, recall_at_k, retrieval_metrics

# Three queries. A: relevant {4, 9} found at ranks 3 and 5. B: relevant {2} at rank 1.
# C: relevant {11}, not retrieved.
RANKED = [[3, 1, 4, 5, 9], [2, 7, 1, 8], [6, 0, 5]]
RELEVANT = [{4, 9}, {2}, {11}]


def test_mrr_by_hand() -> None:
    # @10: A 1/3, B 1/1, C 0 -> (1/3 + 1 + 0) / 3 = 4/9
    assert mrr_at_k(RANKED, RELEVANT, 10) == pytest.approx(4 / 9)
    # @2: A's first hit (rank 3) is cut off -> (0 + 1 + 0) / 3 = 1/3
    assert mrr_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / 3)


def test_recall_by_hand() -> None:
    # @1: A 0/2, B 1/1, C 0/1 -> 1/3
    assert recall_at_k(RANKED, RELEVANT, 1) == pytest.approx(1 / 3)
    # @3: A 1/2 (rank 3), B 1, C 0 -> 1.5 / 3 = 0.5
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx(0.5)
    # @5: A 2/2, B 1, C 0 -> 2/3
    assert recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 3)


def test_ndcg_by_hand() -> None:
    # A @10: DCG = 1/log2(3+1) + 1/log2(5+1) = 0.5 + 0.386853 = 0.886853;
    #        ideal (2 relevant) = 1/log2(2) + 1/log2(3) = 1 + 0.630930 = 1.630930 -> 0.543771.
    # B: a hit at rank 1 of 1 relevant -> 1. C: 0.  Mean = (0.543771 + 1 + 0) / 3 = 0.514590.
    assert ndcg_at_k(RANKED, RELEVANT, 10) == pytest.approx(0.514590, abs=1e-6)
    # A @3: DCG = 0.5 (rank 3 only) / 1.630930 = 0.306574; mean = (0.306574 + 1 + 0) / 3.
    assert ndcg_at_k(RANKED, RELEVANT, 3) == pytest.approx((0.306574 + 1) / 3, abs=1e-6)
    # The ideal is cut at k: 3 relevant, k = 2, hits at ranks 1 and 2 -> DCG = ideal -> 1.
    assert ndcg_at_k([[7, 8, 1]], [{7, 8, 9}], 2) == pytest.approx(1.0)
    # Same with the hit at rank 2 only: (1/log2 3) / (1 + 1/log2 3) = 0.630930 / 1.630930.
    assert ndcg_at_k([[1, 8, 7]], [{7, 8, 9}], 2) == pytest.approx(0.630930 / 1.630930, abs=1e-6)


def test_retrieval_metrics_keys_and_values() -> None:
    metrics = retrieval_metrics(RANKED, RELEVANT)
    assert list(metrics) == ["mrr@10", "recall@1", "recall@10", "recall@100", "ndcg@10"]
    assert metrics["mrr@10"] == pytest.approx(4 / 9)
    assert metrics["recall@10"] == metrics["recall@100"] == pytest.approx(2 / 3)
    custom = retrieval_metrics(RANKED, RELEVANT, ks={"recall": [3], "mrr": (2,)})
    assert custom == pytest.approx({"recall@3": 0.5, "mrr@2": 1 / 3})


def test_ndcg_equals_scikit_learn_on_full_rankings() -> None:
    rng = np.random.default_rng(0)
    queries, docs = 40, 60
    scores = rng.standard_normal((queries, docs))
    truth = (rng.random((queries, docs)) < 0.08).astype(float)
    truth[np.arange(queries), rng.integers(0, docs, queries)] = 1.0  # at least one relevant
    ranked = np.argsort(-scores, axis=1)
    relevant = [set(np.flatnonzero(row).tolist()) for row in truth]
    for k in (1, 5, 10, 60):
        assert ndcg_at_k(ranked, relevant, k) == pytest.approx(ndcg_score(truth, scores, k=k))


def _random_case(seed: int) -> tuple[np.ndarray, list[set[int]]]:
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(200) for _ in range(30)])
    relevant = [set(rng.choice(200, rng.integers(1, 6), replace=False).tolist()) for _ in ranked]
    return ranked, relevant


@pytest.mark.parametrize("seed", range(3))
def test_a_perfect_ranking_scores_one(seed: int) -> None:
    _, relevant = _random_case(seed)
    perfect = [sorted(docs) + [d for d in range(200) if d not in docs] for docs in relevant]
    for k in (1, 10, 100):
        assert mrr_at_k(perfect, relevant, k) == 1.0
        assert ndcg_at_k(perfect, relevant, k) == pytest.approx(1.0)
    # Recall@k is 1 once k covers every relevant document (at most 5 here).
    assert recall_at_k(perfect, relevant, 5) == 1.0
    one_each = np.mean([1 / len(docs) for docs in relevant])
    assert recall_at_k(perfect, relevant, 1) == pytest.approx(one_each)


def test_nothing_relevant_found_scores_zero() -> None:
    ranked, relevant = _random_case(0)
    absent = [{1000 + i} for i in range(len(ranked))]
    assert retrieval_metrics(ranked, absent, ks={"mrr": [10], "recall": [1, 200], "ndcg": [10]}) \
        == {"mrr@10": 0.0, "recall@1": 0.0, "recall@200": 0.0, "ndcg@10": 0.0}
    assert recall_at_k(ranked, relevant, 200) == 1.0  # the whole permutation finds everything


@pytest.mark.parametrize("seed", range(3))
def test_recall_and_mrr_never_fall_as_k_grows(seed: int) -> None:
    ranked, relevant = _random_case(seed)
    ks = [1, 2, 5, 10, 20, 50, 100, 200]
    recalls = [recall_at_k(ranked, relevant, k) for k in ks]
    mrrs = [mrr_at_k(ranked, relevant, k) for k in ks]
    assert recalls == sorted(recalls) and mrrs == sorted(mrrs)
    assert recalls[-1] == 1.0


def test_padding_repeats_and_array_input() -> None:
    # -1 pads (never relevant); a repeated document counts once, at its first place:
    # recall@4 of [5, 5, -1, 7] for {5, 6} is 1/2, and nDCG is 1/log2(2) over 1 + 1/log2(3).
    ranked = np.array([[5, 5, -1, 7]])
    assert recall_at_k(ranked, [{5, 6}], 4) == 0.5
    assert ndcg_at_k(ranked, [{5, 6}], 4) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert mrr_at_k(ranked, [{7}], 4) == pytest.approx(1 / 4)
    as_lists = retrieval_metrics(RANKED, RELEVANT)
    padded = np.array([row + [-1] * (5 - len(row)) for row in RANKED])
    assert retrieval_metrics(padded, RELEVANT) == as_lists


@pytest.mark.parametrize(
    ("ranked", "relevant", "k", "message"),
    [
        ([[1]], [set()], 10, "query 0 has no relevant document"),
        ([[1], [2]], [{1}], 10, "2 rankings but 1 relevant sets"),
        ([], [], 10, "no queries"),
        ([[1]], [{1}], 0, "k must be at least 1"),
    ],
)
def test_bad_input_is_refused(ranked: list, relevant: list, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recall_at_k(ranked, relevant, k)


def test_an_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric 'map'"):
        retrieval_metrics(RANKED, RELEVANT, ks={"map": [10]})
