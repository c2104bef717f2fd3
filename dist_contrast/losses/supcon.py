"""Supervised contrastive loss (Khosla et al.): multi-positive InfoNCE over same-label keys."""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import Temperature, check_2d, compute_dtype, temperature_tensor


def supcon_loss(
    query: Tensor,
    key: Tensor,
    labels: Tensor,
    key_labels: Tensor,
    *,
    temperature: Temperature,
    key_mask: Tensor | None = None,
) -> Tensor:
    """``−1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{a∈A(i)} exp(s_ia/τ) )``, mean over anchors.

    A(i) is every key not masked for query i (``key_mask`` True, e.g. the query itself when
    ``key`` contains the queries); P(i) ⊂ A(i) are the keys with query i's label. Anchors
    without any positive are left out of the mean (0 if none is left).

    Shape:
        query: [B, D]. key: [K, D]. labels: [B]. key_labels: [K]. key_mask: [B, K] bool.
        Returns a 0-dim float32 loss.
    """
    check_2d("query", query)
    check_2d("key", key, query.shape[1])
    if labels.shape != (query.shape[0],) or key_labels.shape != (key.shape[0],):
        raise ValueError("labels must be [B] and key_labels [K], matching query and key")
    tau = temperature_tensor(temperature, query)
    q = query.to(compute_dtype(query))
    logits = q @ key.to(q.dtype).T / tau
    included = torch.ones_like(logits, dtype=torch.bool) if key_mask is None else ~key_mask
    positives = (labels[:, None] == key_labels[None, :]) & included
    has_positive = positives.any(dim=1)
    logits, included = logits[has_positive], included[has_positive]
    positives = positives[has_positive]
    if logits.shape[0] == 0:
        return q.sum() * 0
    log_denominator = torch.logsumexp(logits.masked_fill(~included, float("-inf")), dim=1)
    # Masked-out logits may be anything; they are multiplied by 0, never by −inf.
    positive_logit_sum = (logits * positives).sum(dim=1)
    losses = log_denominator - positive_logit_sum / positives.sum(dim=1)
    return losses.mean()
