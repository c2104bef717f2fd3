"""A synthetic bank with realistic neighbourhoods, for the miner's tests and benchmark.

Well-separated blobs make every index look perfect. Here clusters overlap: centres are random
on the sphere, cluster sizes follow a heavy-tailed (log-normal) spread and each cluster has
its own spread, so the nearest neighbours of a key mix its own and nearby clusters, as the
keys of a partly trained encoder do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clustered_keys(
    count: int,
    dim: int,
    *,
    clusters: int = 100,
    spread: tuple[float, float] = (1.0, 2.5),
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``count`` unit keys in overlapping clusters, and each key's cluster as its label.

    ``spread`` bounds the per-cluster noise norm relative to the unit centre: around 1 the
    clusters overlap substantially.

    Shape: -> keys [count, dim] float32 (unit norm), labels [count] long.
    """
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    # Log-normal cluster weights: a few large clusters and a long tail of small ones.
    weights = torch.exp(1.2 * torch.randn(clusters, generator=generator))
    labels = torch.multinomial(weights, count, replacement=True, generator=generator)
    lo, hi = spread
    noise_norm = lo + (hi - lo) * torch.rand(clusters, generator=generator)
    noise = torch.randn(count, dim, generator=generator) / dim**0.5
    keys = F.normalize(centres[labels] + noise_norm[labels, None] * noise, dim=1)
    return keys, labels
