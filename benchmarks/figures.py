"""How each cost grows with the work, drawn from a suite's JSON (small PNGs, log-log where it
fits): loss time and peak memory against N with the bare-matmul line; the miner's queries/s
and recall against bank size; peak memory per worker against queue size; samples/s against
workers with the ideal line; the start-up phases."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SIZE = (7.0, 3.0)
DPI = 80


def figure_names(data: dict[str, Any]) -> list[str]:
    """The figures a suite's JSON gives (base names, without the machine)."""
    series = data.get("series", {})
    names = {"loss": ["loss_cost"] if series.get("curves") else [],
             "mining": [n for n, key in (("miner", "miner"), ("queue_memory", "memory"))
                        if series.get(key)],
             "train": [n for n, key in (("scaling", "scaling"), ("startup", "startup"))
                       if series.get(key)]}
    return names.get(data["suite"], [])


def draw(data: dict[str, Any], name: str) -> Figure:
    return {"loss_cost": _loss_cost, "miner": _miner, "queue_memory": _queue_memory,
            "scaling": _scaling, "startup": _startup}[name](data)


def write_figures(data: dict[str, Any], folder: Path, machine: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in figure_names(data):
        path = folder / f"{name}-{machine}.png"
        figure = draw(data, name)
        figure.savefig(path, dpi=DPI)
        plt.close(figure)
        written.append(path)
    return written


def _axes(title: str, panels: int = 2) -> tuple[Figure, Any]:
    figure, axes = plt.subplots(1, panels, figsize=SIZE, layout="constrained")
    figure.suptitle(title, fontsize=9)
    for ax in (axes if panels > 1 else [axes]):
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
    return figure, axes


def _loss_cost(data: dict[str, Any]) -> Figure:
    series = data["series"]
    curves, labels = series["curves"], series["labels"]
    figure, (time_ax, memory_ax) = _axes(
        f"InfoNCE over N negatives, B = {series['batch']:,} (log-log)")
    for case, curve in curves.items():
        style = {"linestyle": "--", "color": "black"} if case == "bare" else {"marker": "o"}
        label = "bare matmuls (limit)" if case == "bare" else labels[case]
        time_ax.loglog(curve["N"], curve["seconds"], label=label, markersize=3, **style)
        if case != "bare":
            memory_ax.loglog(curve["N"], [max(m, 0.1) for m in curve["peak_mib"]], label=label,
                             marker="o", markersize=3)
    time_ax.set(xlabel="N (negatives)", ylabel="fwd + bwd seconds")
    memory_ax.set(xlabel="N (negatives)", ylabel="peak MiB")
    time_ax.legend(fontsize=6)
    return figure


def _miner(data: dict[str, Any]) -> Figure:
    curves = data["series"]["miner"]
    figure, (qps_ax, recall_ax) = _axes("Hard-negative search against bank size")
    for label, curve in curves.items():
        style = {"linestyle": "--", "color": "black"} if label.startswith("exact") else {}
        qps_ax.loglog(curve["keys"], curve["qps"], marker="o", markersize=3, label=label,
                      **style)
        if not label.startswith("exact"):
            recall_ax.semilogx(curve["keys"], curve["recall"], marker="o", markersize=3,
                               label=label)
    qps_ax.set(xlabel="bank keys", ylabel="queries/s")
    recall_ax.set(xlabel="bank keys", ylabel="recall@k", ylim=(0, 1.02))
    qps_ax.legend(fontsize=6)
    return figure


def _queue_memory(data: dict[str, Any]) -> Figure:
    memory = data["series"]["memory"]
    figure, ax = _axes("Peak memory per worker against queue size (2 workers)", panels=1)
    for layout in ("replicated", "sharded"):
        ax.loglog(memory["queue"], memory[layout], marker="o", markersize=3, label=layout)
    ax.set(xlabel="queue keys", ylabel="MiB per worker")
    ax.legend(fontsize=7)
    return figure


def _scaling(data: dict[str, Any]) -> Figure:
    scaling = data["series"]["scaling"]
    figure, ax = _axes("dist-contrast train: samples/s against workers", panels=1)
    points = [(1, scaling["one"]), (2, scaling["two"])]
    for workers, values in points:
        if values:
            ax.plot([workers] * len(values), values, "o", color="C0", markersize=3)
    medians = [(w, statistics.median(v)) for w, v in points if v]
    ax.plot([w for w, _ in medians], [m for _, m in medians], "-", color="C0",
            label="measured (median)")
    if scaling["one"]:
        one = statistics.median(scaling["one"])
        ax.plot([1, 2], [one, 2 * one], "--", color="black", label="ideal")
    ax.set(xlabel="workers", ylabel="samples/s", xticks=[1, 2], ylim=(0, None))
    ax.legend(fontsize=7)
    return figure


def _startup(data: dict[str, Any]) -> Figure:
    startup = data["series"]["startup"]
    kept = [(label, [v for v in values if v is not None]) for label, values in startup.items()
            if not label.startswith(("total", "after"))]
    phases = [(label, float(statistics.median(v))) for label, v in kept if v]
    figure, ax = _axes("From dist-contrast train to the first step (median seconds)", panels=1)
    figure.set_size_inches(SIZE[0], 3.6)
    left = 0.0
    for i, (label, seconds) in enumerate(phases):
        ax.barh([0], [seconds], left=left, color=f"C{i % 10}", label=f"{label} {seconds:.1f} s",
                hatch="//" if i >= 10 else None)
        left += seconds
    ax.set(yticks=[], xlabel="seconds")
    figure.legend(fontsize=6, ncol=3, loc="outside lower center")
    return figure
