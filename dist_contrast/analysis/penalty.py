"""Wang & Liu's relative penalty: how InfoNCE spreads its push over the negatives.

Definitions: docs/science.md#relative-penalty-metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dist_contrast.losses._common import Temperature, compute_dtype, temperature_tensor


def negative_similarities(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    positive_index: Tensor | None = None,
    in_batch: bool = True,
) -> tuple[Tensor, Tensor]:
    """Each query's positive similarity and its negatives' similarities (in-batch keys other
    than the positive, then the pool).

    Shape:
        query: [B, D]. key: [K, D]. negatives: [N, D]. Returns ([B], [B, K − 1 + N]).
    """
    q = query.detach().to(compute_dtype(query))
    batch = q.shape[0]
    if positive_index is None:
        positive_index = torch.arange(batch, device=q.device)
    sims = q @ key.detach().to(q.dtype).T
    positive = sims.gather(1, positive_index[:, None]).squeeze(1)
    blocks = []
    if in_batch and key.shape[0] > 1:
        keep = torch.ones_like(sims, dtype=torch.bool)
        keep[torch.arange(batch, device=q.device), positive_index] = False
        blocks.append(sims[keep].reshape(batch, key.shape[0] - 1))
    if negatives is not None:
        blocks.append(q @ negatives.detach().to(q.dtype).T)
    if not blocks:
        raise ValueError("there are no negatives: give negatives or in_batch=True with K > 1")
    return positive, torch.cat(blocks, dim=1)


def relative_penalty(negative_sims: Tensor, temperature: Temperature) -> Tensor:
    """``r_i(s_ij) = exp(s_ij/τ) / Σ_k exp(s_ik/τ)``: the share of query i's push on negative j.

    It equals ``|∂L_i/∂s_ij| / |∂L_i/∂s_ii|`` for InfoNCE: a Boltzmann distribution over the
    negatives, sharper (harder-negative-focused) for smaller τ.

    Shape:
        negative_sims: [B, N]. Returns [B, N], rows summing to 1.
    """
    tau = temperature_tensor(temperature, negative_sims).detach()
    return torch.softmax(negative_sims.to(compute_dtype(negative_sims)) / tau, dim=1)


def penalty_entropy(negative_sims: Tensor, temperature: Temperature) -> Tensor:
    """Mean entropy ``H(r_i)`` of the relative penalty (nats); strictly increasing in τ.

    Shape:
        negative_sims: [B, N]. Returns a 0-dim tensor.
    """
    tau = temperature_tensor(temperature, negative_sims).detach()
    log_r = torch.log_softmax(negative_sims.to(compute_dtype(negative_sims)) / tau, dim=1)
    return -(log_r.exp() * log_r).sum(dim=1).mean()


def top_k_penalty_share(negative_sims: Tensor, temperature: Temperature, k: int) -> Tensor:
    """Mean share of the penalty that falls on each query's k most similar negatives.

    Shape:
        negative_sims: [B, N]. Returns a 0-dim tensor in (0, 1].
    """
    r = relative_penalty(negative_sims, temperature)
    return r.topk(min(k, r.shape[1]), dim=1).values.sum(dim=1).mean()


def sample_relative_penalty(
    negative_sims: Tensor,
    temperature: Temperature,
    max_points: int = 2000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A small sample of ``(s_ij, r_ij)`` for a figure: whole rows (random queries) while they
    fit in ``max_points``, else one random query's row thinned to ``max_points`` random
    negatives (its ``r`` still normalised over the whole row). Whole rows keep ``Σ_j r_ij = 1``.

    ``generator`` (CPU) picks the rows; the global RNG is never drawn from, so sampling
    cannot change a run.

    Shape:
        negative_sims: [B, N]. Returns (s, r), both [R, M] float32 on the CPU, R·M ≤ max_points
        (R ≥ 1).
    """
    r = relative_penalty(negative_sims, temperature).detach().float().cpu()
    sims = negative_sims.detach().float().cpu()
    batch, count = sims.shape
    rows = torch.randperm(batch, generator=generator)[: max(1, min(batch, max_points // count))]
    s, r = sims[rows], r[rows]
    if count > max_points:
        columns = torch.randperm(count, generator=generator)[:max_points]
        s, r = s[:, columns], r[:, columns]
    return s, r


def penalty_summary(penalty: Tensor, top_k: int) -> dict[str, float]:
    """The penalty metrics of a relative penalty given per negative (an objective's own, over
    the entries its loss counts; 0 elsewhere): mean entropy H(r_i) in nats, its maximum
    log n_i (n_i the entries counted), the share on the k largest, and n_i's mean. Queries that
    count no negative are left out.

    Shape:
        penalty: [B, N], rows summing to 1 or all 0. Returns plain floats.
    """
    r = penalty.detach().double()
    counted = (r > 0).sum(dim=1)
    rows = counted > 0
    if not bool(rows.any()):
        return {}
    r, counted = r[rows], counted[rows]
    entropy = -(torch.where(r > 0, r * torch.log(r.clamp(min=1e-300)), 0.0)).sum(dim=1)
    share = r.topk(min(top_k, r.shape[1]), dim=1).values.sum(dim=1)
    return {
        "penalty_entropy": float(entropy.mean()),
        "penalty_entropy_max": float(torch.log(counted.double()).mean()),
        f"top{top_k}_penalty_share": float(share.mean()),
        "negatives_counted": float(counted.double().mean()),
    }
