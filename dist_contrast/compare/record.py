"""The run record, ``runs.csv``: one row per compared run, so that every number of the table
and of a claim can be traced to the run (and seed) it came from."""

from __future__ import annotations

import csv
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from dist_contrast.compare.report import table_metrics
from dist_contrast.compare.runs import (
    COLLAPSED,
    CONFIG_TAG,
    SEED,
    TAU,
    Group,
    RunRecord,
    point_labels,
)

MAX_STEPS = "trainer.max_steps"
#: MLflow's tag with the command line that started the run (see ``tracking/sources.py``).
SOURCE_NAME = "mlflow.source.name"
HEADER = ("run_id", "run_name", "point", "loss", "tau", "seed", "steps", "config")


def config_file(run: RunRecord) -> str:
    """The config file the run was trained from: the tag a sweep puts on each child, else the
    CONFIG of a ``dist-contrast train CONFIG ...`` command line; "" when neither says it."""
    if run.tags.get(CONFIG_TAG):
        return run.tags[CONFIG_TAG]
    try:
        words = shlex.split(run.tags.get(SOURCE_NAME, ""))
    except ValueError:  # a command line cut at MLflow's tag limit inside a quote
        return ""
    if len(words) > 2 and words[:2] == ["dist-contrast", "train"]:
        return words[2]
    return ""


def steps_trained(run: RunRecord, loss_history: Sequence[tuple[int, float]]) -> str:
    """The last step ``train/loss`` was logged at, else the ``trainer.max_steps`` param."""
    if loss_history:
        return str(max(step for step, _ in loss_history))
    return run.params.get(MAX_STEPS, "")


def run_rows(
    groups: Sequence[Group], loss_histories: Mapping[str, Sequence[tuple[int, float]]]
) -> tuple[list[str], list[list[str]]]:
    """The header and one row per run, grid point by grid point: run id and name, the point's
    label, loss, τ ("" for a loss without one), seed, steps trained, config file, then the final
    value of every table metric ("" where the run has none)."""
    metrics = [*table_metrics(groups), COLLAPSED]
    named = point_labels(groups)
    rows = []
    for group in groups:
        for run in sorted(group.runs, key=lambda r: (_seed(r), r.name)):
            values = [run.metrics.get(m) for m in metrics]
            rows.append([
                run.run_id, run.name, named[id(group)], group.loss,
                run.params.get(TAU, "") if group.tau is not None else "",
                run.params.get(SEED, ""), steps_trained(run, loss_histories.get(run.run_id, [])),
                config_file(run), *("" if v is None else repr(v) for v in values),
            ])
    return [*HEADER, *metrics], rows


def _seed(run: RunRecord) -> tuple[int, str]:
    text = run.params.get(SEED, "")
    return (int(text), "") if text.lstrip("-").isdigit() else (0, text)


def write_runs_csv(
    path: Path, groups: Sequence[Group],
    loss_histories: Mapping[str, Sequence[tuple[int, float]]],
) -> Path:
    """``runs.csv`` at ``path`` (see :func:`run_rows`)."""
    header, rows = run_rows(groups, loss_histories)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
