"""Reading finished runs from MLflow, grouping them into grid points and their statistics.

MLflow is imported here only (client calls, so that sqlite and ``http://`` stores behave the
same); grouping and statistics are pure functions of :class:`RunRecord` values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_contrast.errors import UserError
from dist_contrast.tracking import PARENT_TAG, SWEEP_TAG, fail_fast, sqlite_path

SEED = "experiment.seed"
TAU = "loss.temperature"
LOSS = "loss.name"
CONFIG_TAG = "dist_contrast.sweep.config"
#: Params that name or place a run rather than choose its science: never part of a grid point.
IGNORED = {SEED, "experiment.run_name", "experiment.output_dir", "trainer.resume_from"}
IGNORED_PREFIXES = ("tracking.",)
#: The final metrics the table reports, in its column order.
TABLE_METRICS = (
    "eval/knn_acc", "eval/linear_probe_acc", "eval/uniformity", "eval/tolerance",
    "diag/penalty_entropy", "eval/local_separation",
)
#: Text runs' retrieval metrics (the dense encoder, then BM25 and the hybrids on the same
#: split): columns of the table when any run has them.
RETRIEVAL_METRICS = (
    "eval/mrr_at_10", "eval/recall_at_1", "eval/recall_at_10", "eval/ndcg_at_10",
    "eval/bm25_mrr_at_10", "eval/hybrid_mrr_at_10", "eval/rrf_mrr_at_10",
)
#: What the figure against τ plots by default: kNN accuracy, or MRR@10 for text runs.
DEFAULT_METRICS = ("eval/knn_acc", "eval/mrr_at_10")
COLLAPSED = "eval/collapsed"


@dataclass(frozen=True)
class RunRecord:
    """One finished run as the comparison needs it: plain values, no MLflow objects."""

    run_id: str
    name: str
    params: Mapping[str, str]
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n − 1; None for n = 1) over seeds."""

    mean: float
    std: float | None
    n: int

    def __str__(self) -> str:
        std = "—" if self.std is None else f"{self.std:.4f}"
        return f"{self.mean:.4f} ± {std} (n={self.n})"


@dataclass
class Group:
    """A grid point: the runs whose params differ only in the seed (and names, paths)."""

    key: tuple[tuple[str, str], ...]
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.key)

    @property
    def loss(self) -> str:
        return self.params.get(LOSS, "?")

    @property
    def tau(self) -> float | None:
        """τ, or None for a loss that has none (its runs still record the config's value)."""
        return _float(self.params.get(TAU)) if _uses_temperature(self.loss) else None

    @property
    def arm(self) -> str:
        """The sweep config file the runs came from (its stem), else the loss name."""
        sources = {Path(r.tags[CONFIG_TAG]).stem for r in self.runs if CONFIG_TAG in r.tags}
        return sources.pop() if len(sources) == 1 else self.loss

    def values(self, metric: str) -> list[float]:
        """The metric's final finite values over this group's runs (runs without it left out)."""
        values = [r.metrics.get(metric) for r in self.runs]
        return [v for v in values if v is not None and math.isfinite(v)]

    def stat(self, metric: str) -> Stat | None:
        """Mean ± std of the metric's final values over this group's runs."""
        return summarise(self.values(metric))

    @property
    def collapsed(self) -> bool:
        """Whether any seed raised the collapse alarm at its last eval."""
        return any(r.metrics.get(COLLAPSED, 0.0) >= 1.0 for r in self.runs)


def _uses_temperature(loss: str) -> bool:
    """Whether ``loss`` has a temperature (a loss this process does not know: assumed so)."""
    from dist_contrast.objectives import get_objective

    try:
        return get_objective(loss).uses_temperature
    except (KeyError, ValueError):
        return True


def labels(groups: Sequence[Group]) -> dict[int, str]:
    """A short name per group (by ``id``): its arm, plus the params besides τ that vary among
    the groups of that arm (``momentum=0.9``). The lines of the figures, a column of the table."""
    arms: dict[str, list[Group]] = {}
    for group in groups:
        arms.setdefault(group.arm, []).append(group)
    named = {}
    for arm, members in arms.items():
        extra = varying_params(members)
        for group in members:
            values = " ".join(f"{k.rsplit('.', 1)[-1]}={group.params.get(k)}" for k in extra)
            named[id(group)] = f"{arm} {values}".strip()
    return named


def point_labels(groups: Sequence[Group]) -> dict[int, str]:
    """A name per group (by ``id``) that tells every grid point apart: its label and τ
    (``contrastive τ=0.2``; no τ for a loss without one)."""
    named = labels(groups)
    return {id(g): f"{named[id(g)]}{f' τ={g.tau:g}' if g.tau is not None else ''}"
            for g in groups}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def summarise(values: Sequence[float]) -> Stat | None:
    """Mean ± sample std with n; None when there is no value."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def _counts(key: str) -> bool:
    return key not in IGNORED and not key.startswith(IGNORED_PREFIXES)


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Runs grouped by every param but the ignored ones; sorted by arm, then τ."""
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        key = tuple(sorted((k, v) for k, v in run.params.items() if _counts(k)))
        groups.setdefault(key, Group(key)).runs.append(run)
    # By arm (sweep config, else loss), then τ; a missing τ sorts last within its arm; other
    # params break ties for a stable order.
    return sorted(groups.values(),
                  key=lambda g: (g.arm, g.loss, g.tau is None, g.tau or 0.0, g.key))


def varying_params(groups: Sequence[Group]) -> list[str]:
    """Params besides loss and τ whose values differ between groups: the table's extra columns."""
    keys = sorted({k for g in groups for k, _ in g.key} - {LOSS, TAU})
    return [k for k in keys if len({g.params.get(k) for g in groups}) > 1]


# ----------------------------------------------------------------------------- MLflow


@contextmanager
def _store(tracking_uri: str) -> Iterator[Any]:
    """A client whose failures (unreachable server, broken store) become one UserError line."""
    database = sqlite_path(tracking_uri)
    if database is not None and not database.is_file():
        # MLflow would create an empty store there: say that there is nothing to read instead.
        raise UserError(f"no MLflow store at '{tracking_uri}'; pass --tracking-uri with the "
                        "store the runs were logged to")
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would bury ours
    fail_fast()
    try:
        yield mlflow.MlflowClient(tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot read the MLflow tracking store '{tracking_uri}' ({first[:200]}); "
            "start the server or pass --tracking-uri with a reachable store"
        ) from None


def _search(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every run matching the filter, page by page."""
    found: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _record(run: Any) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or run.info.run_id,
                     dict(run.data.params), dict(run.data.metrics), dict(run.data.tags))


def load_runs(target: str, tracking_uri: str) -> tuple[list[RunRecord], str | None]:
    """The FINISHED runs ``target`` names: an experiment's runs (sweep parents left out), or a
    parent run's children. Returns them with the parent's id (None for an experiment)."""
    finished = "attributes.status = 'FINISHED'"
    with _store(tracking_uri) as client:
        experiment = client.get_experiment_by_name(target)
        parent = None
        if experiment is not None:
            runs = [r for r in _search(client, experiment.experiment_id, finished)
                    if r.data.tags.get(SWEEP_TAG, "").lower() != "true"]
        else:
            parent = _parent(client, target, tracking_uri)
            runs = _search(client, parent.info.experiment_id,
                           f"{finished} and tags.`{PARENT_TAG}` = '{target}'")
    if not runs:
        where = f"experiment '{target}'" if parent is None else f"parent run {target}"
        raise UserError(f"no FINISHED runs in {where} of '{tracking_uri}'; nothing to compare")
    return [_record(r) for r in runs], None if parent is None else target


def _parent(client: Any, target: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(target)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")):
            raise
        raise UserError(
            f"'{target}' is neither an experiment name nor a run id in '{tracking_uri}'"
        ) from None


def metric_histories(
    run_ids: Sequence[str], key: str, tracking_uri: str
) -> dict[str, list[tuple[int, float]]]:
    """Each run's (step, value) history of ``key``, in step order."""
    with _store(tracking_uri) as client:
        return {
            run_id: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for run_id in run_ids
        }


def log_to_parent(parent_id: str, files: Sequence[Path], tracking_uri: str) -> None:
    """The comparison's files (only they: ``--out`` may hold others) as the parent run's
    artifacts, under ``compare/``."""
    with _store(tracking_uri) as client:
        for path in files:
            client.log_artifact(parent_id, str(path), "compare")


def default_metric(groups: Sequence[Group]) -> str:
    """The first of :data:`DEFAULT_METRICS` that some run has (kNN accuracy when none)."""
    for metric in DEFAULT_METRICS:
        if any(group.stat(metric) is not None for group in groups):
            return metric
    return DEFAULT_METRICS[0]
