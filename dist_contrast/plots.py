"""Figures people would rather look at than read: embeddings by class, training curves."""

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
