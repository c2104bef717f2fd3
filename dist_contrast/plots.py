"""Figures people would rather look at than read: embeddings by class, training curves, the
relative penalty and the similarity histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers, CI or clusters
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _pca_2d(x: torch.Tensor) -> torch.Tensor:
    """Project rows onto their first two principal components. Shape: [N, D] -> [N, 2]."""
    centred = x.float() - x.float().mean(dim=0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=min(2, centred.shape[1]), center=False)
    return centred @ v[:, :2]


def plot_embeddings(raw: torch.Tensor, learned: torch.Tensor, labels: torch.Tensor) -> Any:
    """Side by side: PCA of the raw inputs and of the learned embedding, coloured by class."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for axis, data, title in ((axes[0], raw, "raw input"), (axes[1], learned, "learned embedding")):
        points = _pca_2d(data).numpy()
        axis.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab10", s=4, alpha=0.7)
        axis.set_title(f"{title} (PCA)")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return figure


def plot_curves(series: Mapping[str, Sequence[tuple[int, float]]], title: str = "") -> Any:
    """One panel per metric; each metric a list of (step, value)."""
    names = list(series)
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        points = series[name]
        axis.plot([s for s, _ in points], [v for _, v in points])
        axis.set_title(name)
        axis.set_xlabel("step")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_relative_penalty(
    snapshots: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
) -> Any:
    """InfoNCE's relative penalty ``r_ij`` against the negative similarity ``s_ij``, one colour
    per snapshot (label, s, r): how sharply τ focuses the push on the hardest negatives. Log
    scale: ``r`` spans orders of magnitude; the dashed line of each colour is the uniform
    ``1/N`` of its rows (τ → ∞, the simple loss).

    Shape:
        s, r: [R, M] (R queries' rows, the same in both).
    """
    figure, axis = plt.subplots(figsize=(6, 4.2))
    colours = plt.get_cmap("viridis")
    for index, (label, s, r) in enumerate(snapshots):
        colour = colours(index / max(1, len(snapshots) - 1))
        axis.scatter(s.flatten().numpy(), r.flatten().clamp_min(1e-30).numpy(), s=3,
                     alpha=0.4, color=colour, label=label)
        axis.axhline(1.0 / r.shape[1], color=colour, linestyle="--", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_xlabel("negative similarity s_ij")
    axis.set_ylabel("relative penalty r_ij")
    axis.set_title("relative penalty over the negatives")
    axis.legend(markerscale=4, fontsize=8)
    figure.tight_layout()
    return figure


def plot_similarities(positive: torch.Tensor, negative: torch.Tensor, bins: int = 60) -> Any:
    """Histograms (densities) of positive-pair and negative-pair cosine similarities.

    Shape:
        positive: [P]. negative: [M].
    """
    figure, axis = plt.subplots(figsize=(6, 4))
    edges = torch.linspace(-1.0, 1.0, bins + 1).tolist()
    axis.hist(negative.flatten().numpy(), bins=edges, density=True, alpha=0.6, label="negatives")
    axis.hist(positive.flatten().numpy(), bins=edges, density=True, alpha=0.6, label="positives")
    axis.set_xlabel("cosine similarity")
    axis.set_ylabel("density")
    axis.legend()
    figure.tight_layout()
    return figure
