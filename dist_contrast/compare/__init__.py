"""``dist-contrast compare``: one table, the figures, a record of every run, the claims' tests
(``--claims``) and one HTML report over the finished runs of an experiment or a sweep's parent
run, grouped into grid points (seeds pooled)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dist_contrast.compare.runs import Group, default_metric, group_runs, load_runs
from dist_contrast.errors import UserError

if TYPE_CHECKING:
    from dist_contrast.compare.claims import ClaimResult, Pending


#: Eval metrics drawn against the step when runs logged them at two steps or more.
TRAJECTORY_METRICS = ("eval/knn_acc", "eval/uniformity", "eval/tolerance")


@dataclass(frozen=True)
class Comparison:
    """What a comparison wrote: the grid points, the table, the claims' table (None without
    ``--claims``) and the files."""

    groups: list[Group]
    table: str
    files: list[Path]
    parent_id: str | None
    claims: str | None = None
    results: list[ClaimResult] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)


def _figures(
    groups: list[Group], metric: str, out: Path, tracking_uri: str,
    loss_histories: Mapping[str, Sequence[tuple[int, float]]],
) -> list[Path]:
    import matplotlib.pyplot as plt

    from dist_contrast.compare import figures
    from dist_contrast.compare.runs import metric_histories

    run_ids = [r.run_id for g in groups for r in g.runs]

    def logged(*names: str) -> bool:
        return any(group.stat(name) is not None for group in groups for name in names)

    made = {"accuracy_vs_tau": figures.plot_against_tau(groups, metric)}
    # Text runs log neither: no empty figures for them.
    if logged("eval/uniformity", "eval/tolerance"):
        made["uniformity_tolerance"] = figures.plot_uniformity_tolerance(groups)
    if logged("diag/penalty_entropy"):
        made["penalty_entropy_vs_tau"] = figures.plot_against_tau(groups, "diag/penalty_entropy")
    made["train_loss"] = figures.plot_loss_curves(groups, loss_histories)
    for name in TRAJECTORY_METRICS:
        if not logged(name):
            continue
        histories = metric_histories(run_ids, name, tracking_uri)
        # A metric evaluated only at the end has one point per run: no trajectory to draw.
        if any(len({step for step, _ in points}) >= 2 for points in histories.values()):
            made[f"trajectory_{name.replace('/', '_')}"] = figures.plot_trajectory(
                groups, histories, name)
    paths = []
    for name, figure in made.items():
        path = out / f"{name}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)  # many comparisons in one process must not pile up figures
        paths.append(path)
    return paths


def check_out(folder: Path) -> None:
    """``--out`` must be a folder, or a path where one can be made: not a file, not under a
    file, not where this user cannot write. Nothing is created here."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} is a file, not a folder; give a folder for the "
                        "comparison's files (it is made if missing), or move the file away")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {folder} cannot be made: {existing} is a file, not a folder; "
                        "give a folder for the comparison's files")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {folder}: {existing} is not writable by this user; give a "
                        "folder you can write to")


def compare(
    target: str, tracking_uri: str, out: str | Path = "comparison",
    metric: str | None = None, claims: str | Path | None = None, partial: bool = False,
) -> Comparison:
    """Compare the FINISHED runs ``target`` names (an experiment name or a parent run id):
    write ``comparison.md``, ``runs.csv`` (one row per run), the PNGs and ``report.html`` to
    ``out`` and, for a parent run, log them as its artifacts under ``compare/``. ``metric`` is
    plotted against τ (default: ``eval/knn_acc``, or ``eval/mrr_at_10`` for text runs). With
    ``claims`` (a YAML file, see :mod:`dist_contrast.compare.claims`) each claim is tested over
    seeds and ``claims.md`` is written too; a bad file or selector is a UserError before any
    file is written. With ``partial`` (a study still running), a claim whose point has no
    finished runs yet is listed as not tested, with what it waits for, instead."""
    from dist_contrast.compare.claims import (
        evaluate,
        markdown_claims,
        read_claims,
        split_pending,
    )
    from dist_contrast.compare.record import write_runs_csv
    from dist_contrast.compare.report import html_report, markdown_table
    from dist_contrast.compare.runs import log_to_parent, metric_histories

    folder = Path(out)
    check_out(folder)  # before MLflow is read: a wrong --out is one line, in no time
    wanted = read_claims(claims) if claims is not None else []  # the same for a bad file
    runs, parent_id = load_runs(target, tracking_uri)
    groups = group_runs(runs)
    if metric is None:
        metric = default_metric(groups)
    pending: list[Pending] = []
    if partial:
        wanted, pending = split_pending(wanted, groups)
    results = evaluate(wanted, groups) if wanted else []  # a bad selector: nothing written
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a folder that went away or lost its rights since the check
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror or exc}); "
                        "give a folder you can write to") from None
    table = markdown_table(groups)
    (folder / "comparison.md").write_text(f"# Comparison of {target}\n\n{table}")
    files = [folder / "comparison.md"]
    claims_table = None
    if claims is not None:
        claims_table = markdown_claims(results, pending)
        (folder / "claims.md").write_text(f"# Claims about {target}\n\n{claims_table}")
        files.append(folder / "claims.md")
    loss_histories = metric_histories([r.run_id for g in groups for r in g.runs], "train/loss",
                                      tracking_uri)
    files.append(write_runs_csv(folder / "runs.csv", groups, loss_histories))
    pngs = _figures(groups, metric, folder, tracking_uri, loss_histories)
    report = folder / "report.html"
    report.write_text(html_report(f"Comparison of {target}", groups, pngs, results,
                                   pending))
    files += [*pngs, report]
    if parent_id is not None:
        log_to_parent(parent_id, files, tracking_uri)
    return Comparison(groups, table, files, parent_id, claims_table, results, pending)
