"""A training run without Ray: the driver's own plan and MLflow run, then the workers' own loop
(:func:`dist_contrast.train.entry.run_worker`) in ``trainer.num_workers`` gloo processes.

What differs from ``dist-contrast train`` is only what Ray Train adds: starting the worker
group, restarts, the progress line and the stop request. Everything a worker does (data,
DeepSpeed, pools, the step, checkpoints, MLflow logging, resuming) is the real code, in seconds
instead of Ray's start-up; tests of the Ray path itself stay on Ray (marked ``ray``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gloo import run_distributed

Setup = Callable[[], None]


class LocalTrain:
    """What the worker uses of ``ray.train``: ``report`` (Ray is given metrics only; the
    checkpoints are the trainer's own) and ``Checkpoint(path).as_directory()``."""

    reports: list[dict[str, Any]] = []

    @staticmethod
    def report(metrics: dict[str, Any], checkpoint: Any = None) -> None:
        LocalTrain.reports.append(metrics)

    class Checkpoint:
        def __init__(self, path: str) -> None:
            self.path = path

        @contextmanager
        def as_directory(self) -> Iterator[str]:
            yield self.path


@dataclass(frozen=True)
class LocalRun:
    """A finished run: the driver's plan (its resolved config and notes) and the MLflow run."""

    plan: Any  # dist_contrast.driver.plan.RunPlan
    run_id: str


def _rank(loop_config: dict[str, Any], setup: Setup | None) -> tuple[str, str, int] | None:
    """One gloo rank: what a Ray Train worker runs, with :class:`LocalTrain` for ``ray.train``.
    A user error comes back as ``(type, line, exit code)``, as Ray hands the driver a worker's
    exception."""
    from dist_contrast import dist
    from dist_contrast.errors import UserError
    from dist_contrast.train.entry import run_worker

    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LOCAL_RANK"] = str(dist.rank())  # what a launcher would set
    if setup is not None:
        setup()
    try:
        run_worker(loop_config, LocalTrain)
    except UserError as exc:
        return type(exc).__name__, str(exc), exc.exit_code
    return None


def train_in_process(config: str | Path, *overrides: str, folder: Path,
                     setup: Setup | None = None) -> LocalRun:
    """Train ``config`` with ``overrides``, writing into ``folder`` (MLflow store
    ``folder/mlflow.db`` unless the overrides name one). ``setup`` (picklable: a module-level
    function or a ``functools.partial`` of one) runs first in every rank, e.g. to register an
    objective; what the driver's checks must know (an objective the config names) the caller
    registers here itself. A worker's user error is raised here as the driver raises it (same
    class and line), after the MLflow run is marked FAILED."""
    from dist_contrast import errors
    from dist_contrast.config import load_config
    from dist_contrast.driver.lifecycle import TrackedRun
    from dist_contrast.driver.plan import make_plan
    from dist_contrast.tracking import ensure_experiment

    defaults = [f"experiment.output_dir={folder / 'results'}",
                f"tracking.tracking_uri=sqlite:///{folder / 'mlflow.db'}"]
    plan = make_plan(load_config(config, [*defaults, *overrides]), local=True)
    cfg = plan.config
    ensure_experiment(plan.tracking_uri, cfg.tracking.experiment, folder / "mlartifacts")
    with TrackedRun(plan) as tracked:
        run_id = tracked.open()
        loop_config = {"config": cfg.model_dump(mode="json"), "run_id": run_id,
                       "channel": None, "resume_from": plan.resume_source}
        failures = [f for f in run_distributed(_rank, loop_config, setup,
                                               world_size=cfg.trainer.num_workers) if f]
        if failures:
            kind, line, exit_code = failures[0]
            error = getattr(errors, kind, errors.UserError)(line)
            error.exit_code = exit_code
            raise error
        tracked.end("FINISHED")  # rank 0 has marked it; in case it could not
    return LocalRun(plan, run_id)
