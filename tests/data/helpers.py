"""Shared test helpers: small configs and a brute-force kNN classifier."""

from __future__ import annotations

import torch

from dist_contrast.data import DataConfig

SMALL_SYNTHETIC = DataConfig(num_samples=600, dim=16, signal_dim=4)


def knn_accuracy(
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 10,
) -> float:
    """Majority vote of the k Euclidean nearest memory rows."""
    nearest = torch.cdist(queries, memory).topk(k, largest=False).indices
    votes = torch.mode(memory_labels[nearest], dim=1).values
    return (votes == query_labels).float().mean().item()
