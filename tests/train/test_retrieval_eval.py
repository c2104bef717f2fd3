"""The trainer's retrieval evaluation: a dense encoder's metrics by hand on a four-query split,
BM25's equal to the retrieval package's own, the two hybrids fused from both, and non-finite
embeddings reported instead of ranked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from dist_contrast.data.textpairs import RetrievalSplit
from dist_contrast.retrieval import (
    BM25Index,
    dense_search,
    reciprocal_rank_fusion,
    retrieval_metrics,
    score_fusion,
)
from dist_contrast.train.retrieval_eval import RetrievalEvaluator, metric_names

SPLIT = RetrievalSplit(
    queries=["open a file", "sort a list", "parse json text", "join two paths"],
    corpus=["def open_file(p): return open(p)", "def sort_list(xs): return sorted(xs)",
            "def parse_json(t): return loads(t)", "def join_paths(a, b): return a / b"],
    relevant=[frozenset({0}), frozenset({1}), frozenset({2}), frozenset({3})],
)


class Table(nn.Module):
    """An 'encoder' that looks its vectors up: query i and document i are e_i, except the last
    query, which is nearer document 0 than its own (rank 2)."""

    def __init__(self, nonfinite: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        eye = torch.eye(4)
        last = torch.nn.functional.normalize(0.9 * eye[0] + 0.5 * eye[3], dim=0)
        self.vectors = {**{q: eye[i] for i, q in enumerate(SPLIT.queries)},
                        **{d: eye[i] for i, d in enumerate(SPLIT.corpus)}, SPLIT.queries[3]: last}
        if nonfinite:
            self.vectors[SPLIT.queries[1]] = torch.full((4,), float("nan"))
        self.sides: list[str] = []

    def forward(self, texts: Sequence[str], side: str) -> torch.Tensor:
        self.sides.append(side)
        return torch.stack([self.vectors[t] for t in texts]) * self.scale


def test_dense_metrics_by_hand() -> None:
    evaluator = RetrievalEvaluator(SPLIT, torch.device("cpu"), batch=3)
    encoder = Table()
    metrics = evaluator.evaluate(encoder)
    assert metrics["eval/mrr_at_10"] == pytest.approx((1 + 1 + 1 + 1 / 2) / 4)
    assert metrics["eval/recall_at_1"] == pytest.approx(3 / 4)
    assert metrics["eval/recall_at_10"] == metrics["eval/recall_at_100"] == 1.0
    ndcg_last = 1 / torch.log2(torch.tensor(3.0)).item()  # relevant at rank 2
    assert metrics["eval/ndcg_at_10"] == pytest.approx((3 + ndcg_last) / 4)
    assert (metrics["eval/retrieval_queries"], metrics["eval/retrieval_corpus"]) == (4, 4)
    assert set(encoder.sides) == {"query", "document"}  # each text by its own tower


def test_bm25_and_the_hybrid_are_the_retrieval_packages() -> None:
    evaluator = RetrievalEvaluator(SPLIT, torch.device("cpu"))
    bm25 = BM25Index(SPLIT.corpus).search(SPLIT.queries, 4)
    expected = metric_names(retrieval_metrics(bm25.ids, SPLIT.relevant), "bm25_")
    assert evaluator.baseline() == expected
    assert expected["eval/bm25_mrr_at_10"] == 1.0  # each query shares a word with its code only
    metrics = evaluator.evaluate(Table())
    queries = evaluator.embed(Table(), SPLIT.queries, "query")
    corpus = evaluator.embed(Table(), SPLIT.corpus, "document")
    dense = dense_search(queries, corpus, 4)
    for fused, prefix in ((score_fusion([dense, bm25], 4), "hybrid_"),
                          (reciprocal_rank_fusion([dense, bm25], 4), "rrf_")):
        expected_fused = metric_names(retrieval_metrics(fused.ids, SPLIT.relevant), prefix)
        assert {k: metrics[k] for k in expected_fused} == expected_fused


def test_nonfinite_embeddings_are_reported_not_ranked() -> None:
    metrics = RetrievalEvaluator(SPLIT, torch.device("cpu")).evaluate(Table(nonfinite=True))
    assert metrics == {"eval/nonfinite_embeddings": 0.25}
