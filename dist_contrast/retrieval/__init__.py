"""Retrieval evaluation; pure functions over embeddings, texts and rankings.

Ranking metrics (MRR@k, Recall@k, nDCG@k), dense search (exact or FAISS HNSW), the BM25
baseline with a code-aware tokenizer, and the fusion of rankings into a hybrid.
Definitions and usage: docs/retrieval.md.
"""

from dist_contrast.retrieval.bm25 import STOP_WORDS, BM25Index, split_identifier, tokenize
from dist_contrast.retrieval.fusion import min_max, reciprocal_rank_fusion, score_fusion
from dist_contrast.retrieval.metrics import (
    DEFAULT_KS,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    retrieval_metrics,
)
from dist_contrast.retrieval.search import (
    DEFAULT_EXACT_BELOW,
    Ranking,
    dense_search,
    exact_search,
    hnsw_search,
    l2_normalize,
    numpy_search,
    top_k,
)

__all__ = [
    "DEFAULT_EXACT_BELOW",
    "DEFAULT_KS",
    "STOP_WORDS",
    "BM25Index",
    "Ranking",
    "dense_search",
    "exact_search",
    "hnsw_search",
    "l2_normalize",
    "min_max",
    "mrr_at_k",
    "ndcg_at_k",
    "numpy_search",
    "recall_at_k",
    "reciprocal_rank_fusion",
    "retrieval_metrics",
    "score_fusion",
    "split_identifier",
    "tokenize",
    "top_k",
]
