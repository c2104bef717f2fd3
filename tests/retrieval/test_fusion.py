"""Reciprocal-rank fusion and the normalised-score sum against hand-computed fused orders."""

from __future__ import annotations

import numpy as np
import pytest

from dist_contrast.retrieval import Ranking, min_max, reciprocal_rank_fusion, score_fusion


def _ranking(ids: list[list[int]], scores: list[list[float]] | None = None) -> Ranking:
    values = scores if scores is not None else [[0.0] * len(row) for row in ids]
    return Ranking(np.array(ids, dtype=np.int64), np.array(values, dtype=np.float32))


def test_rrf_by_hand() -> None:
    # dense [5, 6, 7], bm25 [7, 8], rrf_k 60:
    #   7: 1/63 + 1/61 = 0.015873 + 0.016393 = 0.032266
    #   5: 1/61 = 0.016393;  6: 1/62 = 0.016129;  8: 1/62 = 0.016129 (a tie: 6 is met first)
    fused = reciprocal_rank_fusion([_ranking([[5, 6, 7]]), _ranking([[7, 8]])], k=6)
    assert fused.ids.tolist() == [[7, 5, 6, 8, -1, -1]]
    np.testing.assert_allclose(
        fused.scores[0], [1 / 63 + 1 / 61, 1 / 61, 1 / 62, 1 / 62, -np.inf, -np.inf], rtol=1e-6
    )
    top2 = reciprocal_rank_fusion([_ranking([[5, 6, 7]]), _ranking([[7, 8]])], k=2)
    assert top2.ids.tolist() == [[7, 5]]


def test_rrf_constant_changes_the_order() -> None:
    # a [1, 2, 3, 4], b [9, 4].
    # rrf_k 60: 4 = 1/64 + 1/62 = 0.015625 + 0.016129 = 0.031754 leads 1 = 9 = 1/61 = 0.016393
    #   (1 and 9 tie; 1 is met first) -> [4, 1].
    # rrf_k 0: 1 = 1/1 = 1, 9 = 1/1 = 1, 4 = 1/4 + 1/2 = 0.75: agreement counts less -> [1, 9].
    a, b = _ranking([[1, 2, 3, 4]]), _ranking([[9, 4]])
    assert reciprocal_rank_fusion([a, b], k=2).ids.tolist() == [[4, 1]]
    assert reciprocal_rank_fusion([a, b], k=2, rrf_k=0).ids.tolist() == [[1, 9]]  # 9 = 1/1


def test_rrf_skips_padding_and_repeats_per_query() -> None:
    # Query 0: a [3, -1], b [3, 3]: 3 = 1/61 + 1/61 (b's repeat ignored).
    # Query 1: a [1, 2], b [-1, -1]: 1 = 1/61, 2 = 1/62.
    a, b = _ranking([[3, -1], [1, 2]]), _ranking([[3, 3], [-1, -1]])
    fused = reciprocal_rank_fusion([a, b], k=2)
    assert fused.ids.tolist() == [[3, -1], [1, 2]]
    np.testing.assert_allclose(fused.scores[0, 0], 2 / 61, rtol=1e-6)


def test_score_fusion_by_hand() -> None:
    # dense [1, 2, 3] with [0.9, 0.5, 0.1] -> min-max [1, 0.5, 0];
    # bm25 [3, 4] with [12, 4] -> [1, 0].
    dense, bm25 = _ranking([[1, 2, 3]], [[0.9, 0.5, 0.1]]), _ranking([[3, 4]], [[12.0, 4.0]])
    # α 0.7: 1 = 0.7, 2 = 0.35, 3 = 0 + 0.3 = 0.3, 4 = 0.
    fused = score_fusion([dense, bm25], k=4, weights=(0.7, 0.3))
    assert fused.ids.tolist() == [[1, 2, 3, 4]]
    np.testing.assert_allclose(fused.scores[0], [0.7, 0.35, 0.3, 0.0], atol=1e-6)
    # α 0.3: 1 = 0.3, 2 = 0.15, 3 = 0.7, 4 = 0 -> bm25's best now leads.
    assert score_fusion([dense, bm25], k=4, weights=(0.3, 0.7)).ids.tolist() == [[3, 1, 2, 4]]
    # Equal weights: 1 = 0.5, 3 = 0 + 0.5 = 0.5 (a tie: 1 is met first), 2 = 0.25, 4 = 0.
    assert score_fusion([dense, bm25], k=5).ids.tolist() == [[1, 3, 2, 4, -1]]


def test_min_max() -> None:
    np.testing.assert_allclose(min_max(np.array([4.0, 12.0, 8.0])), [0.0, 1.0, 0.5])
    # All equal says nothing about order: every entry 0, as if the list were absent.
    np.testing.assert_array_equal(min_max(np.array([3.0, 3.0])), [0.0, 0.0])
    assert min_max(np.array([])).size == 0


def test_score_fusion_ignores_padding_when_normalising() -> None:
    # bm25 [8, -1] with [5.0, -inf]: one real entry, so its min-max is 0 (no order to give).
    dense, bm25 = _ranking([[7, 8]], [[0.8, 0.2]]), _ranking([[8, -1]], [[5.0, -np.inf]])
    fused = score_fusion([dense, bm25], k=2)
    assert fused.ids.tolist() == [[7, 8]]
    np.testing.assert_allclose(fused.scores[0], [0.5, 0.0])


def test_bad_input_is_refused() -> None:
    one, two = _ranking([[1]]), _ranking([[1], [2]])
    with pytest.raises(ValueError, match="different numbers of queries"):
        reciprocal_rank_fusion([one, two], k=1)
    with pytest.raises(ValueError, match="no rankings to fuse"):
        score_fusion([], k=1)
    with pytest.raises(ValueError, match="1 weights for 2 rankings"):
        score_fusion([one, one], k=1, weights=[1.0])
    with pytest.raises(ValueError, match="k must be at least 1"):
        reciprocal_rank_fusion([one], k=0)
