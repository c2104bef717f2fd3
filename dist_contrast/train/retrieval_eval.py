"""Rank-0 retrieval evaluation of a text encoder: the held-out queries against the held-out
corpus, as MRR@10, Recall@1/10/100 and nDCG@10, beside BM25 on the same split (logged once,
as the raw-input kNN is for vectors) and two hybrids of the two: ``hybrid_``, the equal-weight
sum of each list's min-max normalised scores, and ``rrf_``, reciprocal-rank fusion (k = 60).

Metric names are MLflow keys (no ``@``): ``eval/mrr_at_10``, ``eval/bm25_recall_at_1``,
``eval/hybrid_ndcg_at_10``. Definitions: docs/retrieval.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dist_contrast.data.textpairs import RetrievalSplit
from dist_contrast.retrieval import (
    BM25Index,
    Ranking,
    dense_search,
    reciprocal_rank_fusion,
    retrieval_metrics,
    score_fusion,
)

#: How deep each ranking goes: the deepest cut-off of the metrics (Recall@100).
DEPTH = 100


def metric_names(values: dict[str, float], prefix: str) -> dict[str, float]:
    """``{"mrr@10": v}`` -> ``{"eval/<prefix>mrr_at_10": v}``."""
    return {f"eval/{prefix}{name.replace('@', '_at_')}": value for name, value in values.items()}


class RetrievalEvaluator:
    """Scores an encoder's rankings of ``split`` (see the module docstring)."""

    def __init__(self, split: RetrievalSplit, device: torch.device, batch: int = 256) -> None:
        self.split = split
        self.device = device
        self.batch = batch
        self._bm25: Ranking | None = None

    @property
    def depth(self) -> int:
        return min(DEPTH, len(self.split.corpus))

    def _metrics(self, ranking: Ranking, prefix: str) -> dict[str, float]:
        return metric_names(retrieval_metrics(ranking.ids, self.split.relevant), prefix)

    def bm25(self) -> Ranking:
        """BM25's ranking of the corpus for every query (computed once)."""
        if self._bm25 is None:
            index = BM25Index([str(text) for text in self.split.corpus])
            self._bm25 = index.search([str(text) for text in self.split.queries], self.depth)
        return self._bm25

    def baseline(self) -> dict[str, float]:
        """BM25's metrics (``eval/bm25_*``): what the dense encoder is measured against;
        none when a side holds feature rows (BM25 needs words on both sides)."""
        if not self.split.is_text:
            return {}
        return self._metrics(self.bm25(), "bm25_")

    @torch.no_grad()
    def embed(self, encoder: nn.Module, texts: Sequence[Any], side: str) -> np.ndarray:
        """Shape: [n] texts (or feature rows) -> [n, D] float32."""
        was_training = encoder.training
        encoder.eval()
        parts = [encoder(list(texts[i : i + self.batch]), side=side).float().cpu()
                 for i in range(0, len(texts), self.batch)]
        encoder.train(was_training)
        return torch.cat(parts).numpy()

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """The dense encoder's metrics and the hybrids'; ``eval/nonfinite_embeddings`` alone
        when the encoder puts out NaN or inf."""
        queries = self.embed(encoder, self.split.queries, "query")
        corpus = self.embed(encoder, self.split.corpus, "document")
        nonfinite = float(np.mean(~np.isfinite(queries).all(axis=1)))
        if nonfinite > 0 or not np.isfinite(corpus).all():
            return {"eval/nonfinite_embeddings": max(nonfinite, 1e-9)}
        dense = dense_search(queries, corpus, self.depth)
        metrics = self._metrics(dense, "")
        if self.split.is_text:
            hybrid = score_fusion([dense, self.bm25()], self.depth)
            rrf = reciprocal_rank_fusion([dense, self.bm25()], self.depth)
            metrics |= {**self._metrics(hybrid, "hybrid_"), **self._metrics(rrf, "rrf_")}
        return {**metrics, "eval/retrieval_queries": float(len(self.split.queries)),
                "eval/retrieval_corpus": float(len(self.split.corpus))}

