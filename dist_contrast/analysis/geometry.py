"""Embedding-geometry metrics: alignment, uniformity, tolerance, local separation, collapse.

Definitions: docs/science.md#embedding-geometry.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import compute_dtype


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """``E ‖f(x) − f(x⁺)‖^α`` over positive pairs (Wang & Isola; lower = better aligned).

    Shape:
        x, y: [B, D] (row i of x and of y form a positive pair). Returns a 0-dim tensor.
    """
    diff = x.to(compute_dtype(x)) - y.to(compute_dtype(x))
    return torch.linalg.vector_norm(diff, dim=1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """``log E_{i<j} exp(−t‖f_i − f_j‖²)`` (Wang & Isola; lower = more uniform).

    Shape:
        x: [B, D], B ≥ 2. Returns a 0-dim tensor.
    """
    x = x.to(compute_dtype(x))
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least two embeddings")
    squared = torch.pdist(x).pow(2)
    return torch.logsumexp(-t * squared, dim=0) - torch.log(
        torch.tensor(float(squared.numel()), dtype=x.dtype, device=x.device))


def tolerance(x: Tensor, labels: Tensor) -> Tensor:
    """Mean similarity ``f(x)ᵀf(y)`` over pairs of distinct samples with the same label
    (Wang & Liu: how tolerant the embedding is of semantically similar samples). NaN if no
    label occurs twice.

    Shape:
        x: [B, D]. labels: [B]. Returns a 0-dim tensor.
    """
    x = x.to(compute_dtype(x))
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    sims = x @ x.T
    return sims[same].mean() if same.any() else torch.tensor(float("nan"), dtype=x.dtype)


def local_separation(positive: Tensor, negative_sims: Tensor) -> Tensor:
    """``s_ii − max_j s_ij`` per query: positive margin over the hardest negative.

    Shape:
        positive: [B]. negative_sims: [B, N]. Returns [B].
    """
    return positive - negative_sims.amax(dim=1)


def mean_pairwise_similarity(x: Tensor) -> Tensor:
    """``mean_{i≠j} cos(x_i, x_j)``: about ``‖mean_i x_i‖²`` for unit rows, so 0 for an
    embedding spread over the sphere and 1 for one collapsed to a point.

    Uses ``Σ_{i≠j} x_iᵀx_j = ‖Σ_i x_i‖² − Σ_i ‖x_i‖²``: O(n·D), no n×n matrix.

    Shape:
        x: [n, D], n ≥ 2. Returns a 0-dim tensor.
    """
    if x.shape[0] < 2:
        raise ValueError("mean_pairwise_similarity needs at least two embeddings")
    unit = torch.nn.functional.normalize(x.to(compute_dtype(x)), dim=1)
    n = unit.shape[0]
    return (unit.sum(dim=0).pow(2).sum() - unit.pow(2).sum()) / (n * (n - 1))


#: Collapse thresholds (docs/science.md#collapse-alarm). At a mean pairwise cosine of 0.9 the
#: average pair is ~26° apart and the mean direction has norm ~0.95: no class structure survives
#: (a spread embedding sits near 0; C tight, spread-out classes near 1/C). Positives above
#: 0.999 mean the encoder ignores the augmentation; with a mean pairwise cosine above 0.8 that is
#: the onset of the same collapse.
COLLAPSE_MEAN_SIMILARITY = 0.9
COLLAPSE_POSITIVE_SIMILARITY = 0.999
COLLAPSE_MEAN_WITH_POSITIVES = 0.8


def is_collapsed(mean_similarity: float, positive_similarity: float | None = None) -> bool:
    """Whether an embedding with this mean pairwise and mean positive similarity has collapsed
    (thresholds above)."""
    if mean_similarity > COLLAPSE_MEAN_SIMILARITY:
        return True
    return (positive_similarity is not None
            and positive_similarity > COLLAPSE_POSITIVE_SIMILARITY
            and mean_similarity > COLLAPSE_MEAN_WITH_POSITIVES)
