"""The comparison's figures: a metric against τ per loss, the uniformity–tolerance plane, the
training-loss curves and an eval metric's trajectory over the steps. Pure: groups (and metric
histories) in, matplotlib figures out."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402

from dist_contrast.compare.runs import Group, labels  # noqa: E402


def _series(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Groups by arm (sweep config or loss) plus what else varies within it: the lines of an
    "against τ" figure."""
    named = labels(groups)
    series: dict[str, list[Group]] = {}
    for group in groups:
        series.setdefault(named[id(group)], []).append(group)
    return series


def plot_against_tau(groups: Sequence[Group], metric: str) -> Any:
    """``metric`` (mean ± std over seeds) against τ, one line per loss. A loss whose τ does not
    vary is a flat dashed line at its mean: it is no τ curve."""
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    taus = [g.tau for g in groups if g.tau is not None]
    colours = plt.get_cmap("tab10")  # explicit: axhline and errorbar share no colour cycle
    for index, (name, members) in enumerate(_series(groups).items()):
        colour = colours(index % 10)
        label = f"{name} (collapsed)" if any(g.collapsed for g in members) else name
        points = [(g.tau, s) for g in members if (s := g.stat(metric)) is not None]
        if not points:
            continue
        curve = [(t, s) for t, s in points if t is not None]
        if len({t for t, _ in curve}) > 1:
            axis.errorbar([t for t, _ in curve], [s.mean for _, s in curve],
                          yerr=[s.std or 0.0 for _, s in curve], marker="o", capsize=3,
                          label=label, color=colour)
            continue
        tau, stat = points[0]
        axis.axhline(stat.mean, linestyle="--", linewidth=1.2, color=colour,
                     label=f"{label} ({f'τ = {tau:g}' if tau is not None else 'no τ'})")
        if tau is not None:
            axis.errorbar([tau], [stat.mean], yerr=[stat.std or 0.0], marker="s", capsize=3,
                          color=colour)
    if len(set(taus)) > 1 and min(taus) > 0:
        axis.set_xscale("log")  # τ grids are usually geometric
    axis.set_xlabel("τ (loss.temperature)")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} against τ (mean ± std over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_uniformity_tolerance(groups: Sequence[Group]) -> Any:
    """Each grid point in the uniformity–tolerance plane, annotated with its τ (Wang & Liu's
    Fig. 4): low uniformity (more uniform) to the left, high tolerance up."""
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for label, members in _series(groups).items():
        points = [(g, u, t) for g in members
                  if (u := g.stat("eval/uniformity")) and (t := g.stat("eval/tolerance"))]
        if not points:
            continue
        axis.scatter([u.mean for _, u, _ in points], [t.mean for _, _, t in points], label=label)
        for group, u, t in points:
            text = f"τ={group.tau:g}" if group.tau is not None else "τ n/a"
            axis.annotate(text, (u.mean, t.mean), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
    axis.set_xlabel("eval/uniformity")
    axis.set_ylabel("eval/tolerance")
    axis.set_title("uniformity–tolerance plane (mean over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_loss_curves(
    groups: Sequence[Group], histories: Mapping[str, Sequence[tuple[int, float]]]
) -> Any:
    """Every run's ``train/loss`` against the step; one colour per grid point."""
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.get_cmap("tab10")
    labels = {id(g): label for label, members in _series(groups).items() for g in members}
    for index, group in enumerate(groups):
        tau = f" τ={group.tau:g}" if group.tau is not None else ""
        for seed, run in enumerate(group.runs):
            points = histories.get(run.run_id, [])
            axis.plot([s for s, _ in points], [v for _, v in points], linewidth=0.9,
                      color=colours(index % 10), alpha=0.8,
                      label=f"{labels[id(group)]}{tau}" if seed == 0 else None)
    axis.set_xlabel("step")
    axis.set_ylabel("train/loss")
    axis.set_title("train/loss of every run")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def seed_band(
    runs: Sequence[str], histories: Mapping[str, Sequence[tuple[int, float]]]
) -> list[tuple[int, float, float]]:
    """(step, mean, std) over the runs that logged a value at each step (std 0 where one did):
    a grid point's trajectory. A step a run logged twice (a resumed run) counts once."""
    at: dict[int, list[float]] = {}
    for run_id in runs:
        for step, value in dict(histories.get(run_id, [])).items():
            at.setdefault(step, []).append(value)
    band = []
    for step in sorted(at):
        values = at[step]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        band.append((step, statistics.fmean(values), spread))
    return band


def plot_trajectory(
    groups: Sequence[Group], histories: Mapping[str, Sequence[tuple[int, float]]], metric: str
) -> Any:
    """``metric`` against the step, one line per grid point: the mean over seeds, with a band of
    ± one sample std."""
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.get_cmap("tab10")
    labels = {id(g): label for label, members in _series(groups).items() for g in members}
    for index, group in enumerate(groups):
        band = seed_band([r.run_id for r in group.runs], histories)
        if not band:
            continue
        colour = colours(index % 10)
        steps = [s for s, _, _ in band]
        means = [m for _, m, _ in band]
        tau = f" τ={group.tau:g}" if group.tau is not None else ""
        # Past ten points the colours repeat: the line style tells them apart.
        axis.plot(steps, means, marker="o", markersize=3, linewidth=1.2, color=colour,
                  linestyle=("-", "--", ":")[index // 10 % 3], label=f"{labels[id(group)]}{tau}")
        axis.fill_between(steps, [m - s for _, m, s in band], [m + s for _, m, s in band],
                          color=colour, alpha=0.2, linewidth=0)
    axis.set_xlabel("step")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} during training (mean ± std over seeds)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
