"""Diagnostics of how a contrastive loss shapes the embedding; pure functions.

Definitions: docs/science.md#diagnostics.
"""

from dist_contrast.analysis.diagnostics import training_diagnostics
from dist_contrast.analysis.evaluation import knn_accuracy, knn_predict, linear_probe_accuracy
from dist_contrast.analysis.geometry import (
    alignment,
    is_collapsed,
    local_separation,
    mean_pairwise_similarity,
    tolerance,
    uniformity,
)
from dist_contrast.analysis.penalty import (
    negative_similarities,
    penalty_entropy,
    penalty_summary,
    relative_penalty,
    sample_relative_penalty,
    top_k_penalty_share,
)

__all__ = [
    "alignment",
    "is_collapsed",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "local_separation",
    "mean_pairwise_similarity",
    "negative_similarities",
    "penalty_entropy",
    "penalty_summary",
    "relative_penalty",
    "sample_relative_penalty",
    "tolerance",
    "top_k_penalty_share",
    "training_diagnostics",
    "uniformity",
]
