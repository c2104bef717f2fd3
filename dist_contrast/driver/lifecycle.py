"""The MLflow run of one training, from open to end: the same for ``train`` and for each of a
sweep's children, so that every run logs the same things (params, ``config.yaml``, the
dataset, the world size and resume tags, this invocation's source tags)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from dist_contrast.config import flatten, to_yaml
from dist_contrast.driver.plan import RunPlan
from dist_contrast.driver.signals import Interrupted
from dist_contrast.tracking import end_run, open_run


class TrackedRun:
    """One training's MLflow run. :meth:`open` it once the experiment exists; :meth:`end` it
    with its status. As a context manager, a run left open by an exception is ended KILLED
    (an interrupt) or FAILED (anything else, the exception's line as the reason)."""

    def __init__(self, plan: RunPlan, tags: Mapping[str, str] | None = None) -> None:
        self.plan = plan
        self.extra_tags = dict(tags or {})
        self.run_id: str | None = None
        self.continued = False
        self.ended: str | None = None

    def open(self) -> str:
        """Open (or continue, when the run's folder exists) the run; its id."""
        cfg = self.plan.config
        global_batch = cfg.trainer.num_workers * cfg.trainer.batch_size
        self.run_id, self.continued = open_run(
            self.plan.tracking_uri, cfg.tracking.experiment, self.plan.run_name,
            continue_existing=self.plan.continues, params=flatten(cfg),
            config_yaml=to_yaml(cfg), tags={**self.plan.tags(), **self.extra_tags},
            data=self.plan.data.provenance,
            negatives=cfg.negatives.describe(self.plan.data.train_size, global_batch),
        )
        return self.run_id

    def end(self, status: str, reason: str | None = None) -> None:
        """Mark the run ``status`` (FINISHED, FAILED, KILLED) unless it already ended."""
        if self.run_id is not None and self.ended is None:
            end_run(self.plan.tracking_uri, self.run_id, status, reason=reason)
            self.ended = status

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc is None:
            return
        interrupted = isinstance(exc, KeyboardInterrupt | Interrupted)
        self.end("KILLED" if interrupted else "FAILED",
                 reason=None if interrupted else (str(exc).splitlines() or [""])[0])
