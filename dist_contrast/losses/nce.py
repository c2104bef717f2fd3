"""InstDisc's noise-contrastive estimation (binary data vs noise), its focal / GHM weightings,
the Monte-Carlo normaliser Z and the proximal regulariser."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dist_contrast.losses._common import Temperature, check_2d, compute_dtype, temperature_tensor

Weighting = Literal["none", "focal", "ghm"]


def nce_logits(
    query: Tensor,
    positive: Tensor,
    noise: Tensor,
    *,
    temperature: Temperature,
    normalizer: float | Tensor,
    dataset_size: int,
) -> Tensor:
    """Logits ``x`` of the binary data-vs-noise classifier, ``h = sigmoid(x)``.

    With ``P(i|v) = exp(s/τ) / Z`` and uniform noise ``P_n = 1/n``, ``h = P / (P + m·P_n)``,
    so ``x = log P − log(m/n) = s/τ − log(Z·m/n)``; column 0 is the datum, columns 1..m noise.

    Shape:
        query: [B, D]. positive: [B, D] (e.g. the bank entry of each datum). noise: [B, m, D].
        Returns [B, 1 + m] (float32 at least).
    """
    check_2d("query", query)
    check_2d("positive", positive, query.shape[1])
    if noise.dim() != 3 or noise.shape[0] != query.shape[0] or noise.shape[2] != query.shape[1]:
        raise ValueError(f"noise must be [B, m, D] matching query, got {tuple(noise.shape)}")
    if dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive count, got {dataset_size}")
    tau = temperature_tensor(temperature, query)
    q = query.to(compute_dtype(query))
    data = (q * positive.to(q.dtype)).sum(dim=1, keepdim=True)
    noise_sims = torch.bmm(noise.to(q.dtype), q[:, :, None]).squeeze(2)
    sims = torch.cat([data, noise_sims], dim=1)
    num_noise = noise.shape[1]
    log_z = torch.log(torch.as_tensor(normalizer, dtype=q.dtype, device=q.device))
    return sims / tau - log_z - math.log(num_noise / dataset_size)


def nce_loss(
    query: Tensor,
    positive: Tensor,
    noise: Tensor,
    *,
    temperature: Temperature,
    normalizer: float | Tensor,
    dataset_size: int,
    weighting: Weighting = "none",
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
    ghm_bins: int = 10,
) -> Tensor:
    """InstDisc's ``J_NCE = −log h(i, v) − Σ_{k=1..m} log(1 − h(j_k, v))``, mean over the batch.

    ``normalizer`` is Z, a constant (see :class:`NormalizerEstimator`). ``weighting`` re-weights
    the 1 + m binary terms of each datum: ``"focal"`` multiplies each by ``α_t (1 − p_t)^γ``
    (α_t = α for data, 1 − α for noise; no α when ``focal_alpha`` is None); ``"ghm"`` by
    ``β = T / (count of terms in its gradient-norm bin · number of non-empty bins)`` with
    ``g = |h − y|`` over all T = B(1 + m) terms of the batch (stateless GHM-C, no moving
    average), so that a batch whose terms all share a bin is unweighted.

    Shape:
        query: [B, D]. positive: [B, D]. noise: [B, m, D]. Returns a 0-dim loss.
    """
    logits = nce_logits(query, positive, noise, temperature=temperature,
                        normalizer=normalizer, dataset_size=dataset_size)
    target = torch.zeros_like(logits)
    target[:, 0] = 1.0
    # log h = logsigmoid(x) and log(1 − h) = logsigmoid(−x), stable for any x.
    signed = torch.where(target > 0, logits, -logits)
    terms = -F.logsigmoid(signed)  # [B, 1 + m]
    if weighting == "focal":
        terms = terms * focal_weights(signed, focal_gamma, focal_alpha, target)
    elif weighting == "ghm":
        terms = terms * ghm_weights(torch.sigmoid(logits.detach()), target, ghm_bins)
    elif weighting != "none":
        raise ValueError(f"weighting must be 'none', 'focal' or 'ghm', got {weighting!r}")
    return terms.sum(dim=1).mean()


def focal_weights(signed_logits: Tensor, gamma: float, alpha: float | None,
                  target: Tensor) -> Tensor:
    """``α_t (1 − p_t)^γ`` with ``p_t = sigmoid(signed_logits)`` (Lin et al.'s focal factor).

    Shape:
        signed_logits, target: [...]. Returns [...].
    """
    weights = torch.sigmoid(-signed_logits) ** gamma  # 1 − p_t, stably
    if alpha is not None:
        weights = weights * torch.where(target > 0, alpha, 1.0 - alpha)
    return weights


def ghm_weights(probs: Tensor, target: Tensor, bins: int) -> Tensor:
    """GHM-C weights: inverse density of the gradient norm ``g = |p − y|`` over ``bins`` bins.

    Shape:
        probs, target: [...]. Returns [...] (no gradient).
    """
    if bins < 1:
        raise ValueError(f"ghm_bins must be at least 1, got {bins}")
    with torch.no_grad():
        grad_norm = (probs - target).abs()
        index = (grad_norm * bins).long().clamp(max=bins - 1)  # g = 1 goes to the last bin
        counts = torch.bincount(index.flatten(), minlength=bins).to(probs.dtype)
        nonempty = (counts > 0).sum()
        return index.numel() / (counts[index] * nonempty)


def monte_carlo_normalizer(
    query: Tensor, noise: Tensor, *, temperature: Temperature, dataset_size: int
) -> Tensor:
    """``Z ≈ n · mean_{i,k} exp(v_{j_k} · f_i / τ)`` (InstDisc), averaged over the batch.

    Shape:
        query: [B, D]. noise: [B, m, D]. Returns a 0-dim tensor (no gradient).
    """
    with torch.no_grad():
        tau = temperature_tensor(temperature, query).detach()
        q = query.to(compute_dtype(query))
        sims = torch.bmm(noise.to(q.dtype), q[:, :, None]).squeeze(2)
        return dataset_size * torch.exp(sims / tau).mean()


class NormalizerEstimator:
    """Holds InstDisc's Z: a Monte-Carlo estimate kept as a constant between estimates.

    ``every=0`` (InstDisc): Z is estimated at the first step and kept for the whole run.
    ``every=k > 0``: Z is estimated again every k steps. The paper's constant Z assumes the
    bank's similarity scale stays put; once the bank holds trained features the true
    ``n · E_j[exp(v_j·f/τ)]`` grows by orders of magnitude over the first epochs, and a Z frozen
    against the random initial bank turns every similar noise entry into a large loss term.

    Call :meth:`update` every step; between estimates it returns the kept value.
    """

    def __init__(self, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"normaliser refresh interval must be 0 (once) or more, got {every}")
        self.every = every
        self.value: float | None = None
        # Step of the last estimate: a resumed run re-estimates on the same steps.
        self.step: int | None = None

    @property
    def is_set(self) -> bool:
        return self.value is not None

    def is_due(self, step: int) -> bool:
        """True when Z must be (re-)estimated at ``step``: unset, or ``every`` steps old."""
        if self.value is None:
            return True
        if self.every == 0:
            return False
        return step - (self.step or 0) >= self.every

    def set(self, estimate: float | Tensor, step: int) -> float:
        """Keep ``estimate`` as Z from ``step`` on; returns it."""
        value = float(estimate)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"normaliser estimate must be a positive number, got {value}")
        self.value, self.step = value, step
        return value

    def update(
        self,
        query: Tensor,
        noise: Tensor,
        *,
        temperature: Temperature,
        dataset_size: int,
        step: int = 0,
        reduce: Callable[[float], float] | None = None,
    ) -> float:
        """Estimate Z from this batch when due (see :meth:`is_due`, :func:`monte_carlo_normalizer`).

        ``reduce`` combines the workers' estimates (the trainer passes a mean over ranks, so
        every rank keeps the same Z); it must be called on every rank, and ``is_due`` is the
        same on every rank, so it is.

        Shape:
            query: [B, D]. noise: [B, m, D].
        """
        if self.is_due(step):
            estimate = float(monte_carlo_normalizer(
                query, noise, temperature=temperature, dataset_size=dataset_size))
            return self.set(reduce(estimate) if reduce is not None else estimate, step)
        assert self.value is not None
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state["value"]
        self.value = None if value is None else float(value)
        # Checkpoints written before refreshes existed have no step: Z dates from step 0.
        step = state.get("step", 0 if value is not None else None)
        self.step = None if step is None else int(step)


def proximal_regularizer(current: Tensor, previous: Tensor, *, weight: float) -> Tensor:
    """InstDisc's proximal term ``λ‖v_i^(t) − v_i^(t−1)‖²``, mean over the batch.

    ``previous`` (the bank entry from the last visit) is a constant; the gradient goes to the
    current features only.

    Shape:
        current, previous: [B, D]. Returns a 0-dim tensor.
    """
    check_2d("current", current)
    check_2d("previous", previous, current.shape[1])
    diff = current.to(compute_dtype(current)) - previous.detach().to(compute_dtype(current))
    return weight * diff.pow(2).sum(dim=1).mean()
