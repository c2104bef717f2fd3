"""Ray tasks of one CPU each for the offline commands (``dist-contrast mine``'s encoding): a
function mapped over jobs, at most ``workers`` at a time, on ``RAY_ADDRESS``'s cluster or a
local runtime, each result handed back as it finishes.

A value every job needs (a model's weights) is put in Ray's object store once. A task's
failure ends the map with one line: the task's own ``UserError`` as it is, anything else
named with its job. The runtime is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dist_contrast.driver.runtime import connect_for_tasks, shutdown_ray
from dist_contrast.errors import UserError


class RayPool:
    """``with RayPool(workers) as pool: pool.map(...)``; ``workers`` None: every CPU of the
    cluster."""

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1 for Ray tasks, got {workers}")
        self.workers = workers
        self.slots = 0

    def __enter__(self) -> RayPool:
        ray = connect_for_tasks(self.workers)
        self.slots = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown_ray()

    def map(self, function: Callable[..., Any], shared: Any, jobs: Sequence[tuple[Any, ...]],
            on_result: Callable[[int, Any], None], *, names: Sequence[str] | None = None
            ) -> None:
        """``function(shared, *job)`` for each job as a Ray task; ``on_result(i, result)`` on
        this process as job i finishes (in the order they finish)."""
        import ray

        task = ray.remote(num_cpus=1, max_retries=1)(function)
        stored = ray.put(shared)
        pending: dict[Any, int] = {}
        waiting = list(range(len(jobs)))
        while waiting or pending:
            while waiting and len(pending) < self.slots:
                number = waiting.pop(0)
                pending[task.remote(stored, *jobs[number])] = number
            ready, _ = ray.wait(list(pending), num_returns=1)
            number = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # a task's failure arrives as RayTaskError around it
                cause = getattr(exc, "cause", None) or exc
                if isinstance(cause, UserError):
                    raise UserError(str(cause)) from None
                name = names[number] if names is not None else f"job {number}"
                raise UserError(f"{name} failed on a Ray worker: {type(cause).__name__}: "
                                f"{str(cause).splitlines()[0][:200] if str(cause) else ''}; "
                                "see the worker's log in Ray's session folder") from None
            on_result(number, result)
