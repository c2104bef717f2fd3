"""One call the trainer logs every eval interval."""

from __future__ import annotations

import math

from torch import Tensor

from dist_contrast.analysis.geometry import alignment, local_separation, tolerance, uniformity
from dist_contrast.analysis.penalty import (
    negative_similarities,
    penalty_entropy,
    top_k_penalty_share,
)
from dist_contrast.losses._common import Temperature


def training_diagnostics(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None,
    temperature: Temperature,
    labels: Tensor | None = None,
    top_k: int = 10,
    positive_index: Tensor | None = None,
) -> dict[str, float]:
    """Penalty entropy, top-k penalty share, positive / hardest-negative similarity, local
    separation, alignment, uniformity and (with labels) tolerance, as plain floats.

    ``key[positive_index]`` are the positives (default: key i for query i); the negatives are
    the other keys and ``negatives``. Uniformity and tolerance are over the queries.

    Shape:
        query: [B, D]. key: [K, D]. negatives: [N, D]. labels: [B]. positive_index: [B].
    """
    positive, negative_sims = negative_similarities(query, key, negatives,
                                                    positive_index=positive_index)
    positives = key if positive_index is None else key[positive_index]
    out = {
        "penalty_entropy": float(penalty_entropy(negative_sims, temperature)),
        "penalty_entropy_max": math.log(negative_sims.shape[1]),
        f"top{top_k}_penalty_share": float(top_k_penalty_share(negative_sims, temperature, top_k)),
        "positive_similarity": float(positive.mean()),
        "hardest_negative_similarity": float(negative_sims.amax(dim=1).mean()),
        "local_separation": float(local_separation(positive, negative_sims).mean()),
        "alignment": float(alignment(query.detach(), positives[: query.shape[0]].detach())),
    }
    if query.shape[0] >= 2:
        out["uniformity"] = float(uniformity(query.detach()))
    if labels is not None:
        out["tolerance"] = float(tolerance(query.detach(), labels))
    return out
