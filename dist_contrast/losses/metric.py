"""Metric-learning losses: margin contrastive, triplet (with batch-hard mining), N-pair, circle."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_contrast.losses._common import check_2d, compute_dtype


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_i − b_j‖²`` for all pairs, clamped at 0 against rounding.

    Shape:
        a: [B, D]. b: [K, D]. Returns [B, K].
    """
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return squared.clamp(min=0)


def _safe_sqrt(squared: Tensor) -> Tensor:
    """√x with a zero (not NaN) gradient at x = 0: coinciding points have no direction."""
    positive = squared > 0
    return torch.where(positive, squared.clamp(min=torch.finfo(squared.dtype).tiny).sqrt(), 0.0)


def margin_contrastive_loss(
    a: Tensor,
    b: Tensor,
    match: Tensor,
    *,
    margin: float = 1.0,
    pair_mask: Tensor | None = None,
) -> Tensor:
    """Hadsell et al.'s ``1/(2M) Σ [y·d² + (1 − y)·max(m − d, 0)²]``, ``d = ‖a − b‖₂``.

    With a 1-D ``match`` the rows are pairs (a_p, b_p); with a 2-D ``match`` every (a_i, b_j) is a
    pair, except those with ``pair_mask`` True; M is the number of pairs counted.

    Shape:
        pairs: a, b: [M, D], match: [M]. All pairs: a: [B, D], b: [K, D], match: [B, K],
        pair_mask: [B, K] bool. Returns a 0-dim loss.
    """
    check_2d("a", a)
    check_2d("b", b, a.shape[1])
    dtype = compute_dtype(a)
    a, b = a.to(dtype), b.to(dtype)
    y = match.to(dtype)
    if match.dim() == 1:
        if a.shape != b.shape or match.shape != (a.shape[0],):
            raise ValueError("pairs mode needs a and b of the same shape [M, D] and match [M]")
        squared = (a - b).pow(2).sum(dim=1)
        counted = torch.ones_like(y)
    else:
        if match.shape != (a.shape[0], b.shape[0]):
            raise ValueError(f"match must be [B, K] = {(a.shape[0], b.shape[0])}")
        squared = _squared_distances(a, b)
        counted = torch.ones_like(y) if pair_mask is None else (~pair_mask).to(dtype)
    dist = _safe_sqrt(squared)
    per_pair = y * squared + (1 - y) * F.relu(margin - dist).pow(2)
    return (per_pair * counted).sum() / (2 * counted.sum().clamp(min=1))


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    margin: float = 0.2,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """FaceNet's ``max(‖a − p‖² − ‖a − n‖² + α, 0)`` per triplet, mean (or sum) over triplets.

    Shape:
        anchor, positive, negative: [T, D]. Returns a 0-dim loss.
    """
    check_2d("anchor", anchor)
    dtype = compute_dtype(anchor)
    a = anchor.to(dtype)
    to_positive = (a - positive.to(dtype)).pow(2).sum(dim=1)
    to_negative = (a - negative.to(dtype)).pow(2).sum(dim=1)
    losses = F.relu(to_positive - to_negative + margin)
    return losses.sum() if reduction == "sum" else losses.mean()


def batch_hard_triplet_loss(
    anchor: Tensor,
    labels: Tensor,
    reference: Tensor | None = None,
    reference_labels: Tensor | None = None,
    *,
    margin: float = 0.2,
    squared: bool = True,
) -> Tensor:
    """Triplet loss with batch-hard mining: each anchor's farthest positive, nearest negative.

    Positives are references with the anchor's label, negatives those with another label.
    Without ``reference`` the anchors are their own references and an anchor is never its own
    positive. Anchors without a positive or without a negative are skipped (0 if none is left).
    Distances are squared (FaceNet) unless ``squared=False``.

    Shape:
        anchor: [B, D]. labels: [B]. reference: [K, D]. reference_labels: [K].
        Returns a 0-dim loss.
    """
    check_2d("anchor", anchor)
    a = anchor.to(compute_dtype(anchor))
    if reference is None:
        ref, ref_labels = a, labels
        not_self = ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    else:
        if reference_labels is None:
            raise ValueError("reference_labels are required with reference")
        check_2d("reference", reference, a.shape[1])
        ref, ref_labels = reference.to(a.dtype), reference_labels
        not_self = torch.ones(a.shape[0], ref.shape[0], dtype=torch.bool, device=a.device)
    dist = _squared_distances(a, ref)
    if not squared:
        dist = _safe_sqrt(dist)
    same = labels[:, None] == ref_labels[None, :]
    positives = same & not_self
    negatives = ~same
    hardest_positive = dist.masked_fill(~positives, float("-inf")).amax(dim=1)
    hardest_negative = dist.masked_fill(~negatives, float("inf")).amin(dim=1)
    valid = positives.any(dim=1) & negatives.any(dim=1)
    losses = F.relu(hardest_positive[valid] - hardest_negative[valid] + margin)
    return losses.mean() if losses.numel() else dist.sum() * 0


def n_pair_loss(anchor: Tensor, positive: Tensor, positive_index: Tensor | None = None) -> Tensor:
    """Sohn's N-pair loss ``log(1 + Σ_{j≠i} exp(f_i·f_j⁺ − f_i·f_i⁺))``, mean over anchors.

    The other pairs' positives are the negatives, so 2N embeddings give N(N−1) negatives. It is
    a softmax cross-entropy over ``f_i · f⁺`` (no temperature).

    Shape:
        anchor: [N, D]. positive: [K, D], K ≥ N. positive_index: [N] (default ``arange(N)``).
        Returns a 0-dim loss.
    """
    check_2d("anchor", anchor)
    check_2d("positive", positive, anchor.shape[1])
    dtype = compute_dtype(anchor)
    if positive_index is None:
        positive_index = torch.arange(anchor.shape[0], device=anchor.device)
    logits = anchor.to(dtype) @ positive.to(dtype).T
    return F.cross_entropy(logits, positive_index)


def circle_loss(
    similarity: Tensor,
    positive_mask: Tensor,
    negative_mask: Tensor,
    *,
    gamma: float = 80.0,
    margin: float = 0.4,
) -> Tensor:
    """Sun et al.'s circle loss, mean over anchors with at least one positive and one negative.

    ``log[1 + Σ_j exp(γ α_n (s_n − Δ_n)) · Σ_i exp(−γ α_p (s_p − Δ_p))]`` with
    ``α_p = [1 + m − s_p]_+``, ``α_n = [s_n + m]_+``, ``Δ_p = 1 − m``, ``Δ_n = m``. The α are
    weights, not paths for the gradient (detached, as in the paper's self-paced reading). The
    defaults are the paper's fine-grained-retrieval setting (γ = 80, m = 0.4).

    Shape:
        similarity: [B, C]. positive_mask, negative_mask: [B, C] bool. Returns a 0-dim loss.
    """
    if similarity.dim() != 2 or positive_mask.shape != similarity.shape or \
            negative_mask.shape != similarity.shape:
        raise ValueError("similarity, positive_mask and negative_mask must all be [B, C]")
    valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    # Only anchors with both kinds of pairs: an all −inf row would give NaN gradients.
    sims = similarity[valid].to(compute_dtype(similarity))
    pos, neg = positive_mask[valid], negative_mask[valid]
    alpha_p = F.relu(1 + margin - sims.detach())
    alpha_n = F.relu(sims.detach() + margin)
    pos_logits = (-gamma * alpha_p * (sims - (1 - margin))).masked_fill(~pos, float("-inf"))
    neg_logits = (gamma * alpha_n * (sims - margin)).masked_fill(~neg, float("-inf"))
    losses = F.softplus(torch.logsumexp(pos_logits, 1) + torch.logsumexp(neg_logits, 1))
    return losses.mean() if losses.numel() else similarity.sum() * 0
