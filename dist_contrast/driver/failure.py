"""A run that failed, explained in one line: a user mistake found in a worker is the driver's
own one line (exit 2); a worker that died or raised is named, with the full report in a file."""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from dist_contrast.config import Config
from dist_contrast.errors import RunFailed, UserError
from dist_contrast.paths import is_uri
from dist_contrast.train import storage


def explain_failure(exc: BaseException, cfg: Config) -> UserError:
    """One line for the user. A worker's UserError is the driver's; a worker that failed is
    named, with what killed it when that is known, and the full report is saved beside the
    checkpoints."""
    user_error = find(exc, lambda e: isinstance(e, UserError))
    if user_error is not None:  # raised in a worker: the same line and exit status here
        error = UserError(str(user_error))
        error.exit_code = getattr(user_error, "exit_code", UserError.exit_code)
        return error
    report = save_report(cfg, exc)
    group = find(exc, lambda e: hasattr(e, "worker_failures"))  # Ray's WorkerGroupError
    failures: dict[int, BaseException] = getattr(group, "worker_failures", {})
    if not failures:
        first = (str(exc).strip().splitlines() or [""])[0]
        return RunFailed(f"training failed: {type(exc).__name__}: {first[:200]} "
                         f"(full report: {report})")
    # The rank whose process died is the cause; the others then fail in a collective.
    dead = {rank: f for rank, f in failures.items() if _process_died(f)}
    rank, failure = min((dead or failures).items())
    if dead:
        what = "its process died (killed by a signal or the out-of-memory killer)"
        fix = (f"set trainer.max_failures (now {cfg.trainer.max_failures}) above 0 to restart "
               "from the newest checkpoint" if cfg.trainer.max_failures == 0 else
               f"it failed after {cfg.trainer.max_failures} restart(s) "
               "(trainer.max_failures); check the machine's memory and logs")
    else:
        # Ray wraps the worker's own exception; name that one.
        cause = getattr(failure, "cause", None)
        cause = cause if isinstance(cause, BaseException) else failure
        first = (str(cause).strip().splitlines() or [""])[0]
        what = f"{type(cause).__name__}: {first[:200]}"
        fix = "fix the cause and re-run with the same experiment.run_name to continue"
    return RunFailed(f"worker rank {rank} failed: {what}; {fix} (full report: {report})")


def _process_died(failure: BaseException) -> bool:
    """Whether Ray says the worker's process died (as opposed to raising an exception)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    return isinstance(failure, ActorDiedError | ActorUnavailableError) or (
        "worker process has died" in str(failure)
    )


def find(exc: BaseException, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first ``wanted`` exception in ``exc``'s chain of causes and worker failures."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if wanted(current):
            return current
        stack.extend([current.__cause__, current.__context__])
        stack.extend(getattr(current, "worker_failures", {}).values())
        for attr in ("cause", "error"):
            value = getattr(current, attr, None)
            stack.append(value if isinstance(value, BaseException) else None)
    return None


def save_report(cfg: Config, exc: BaseException) -> str:
    """The whole failure (Ray's report with every worker's traceback) in a file; its path.

    Beside the checkpoints when the run's folder can be written, else in the temporary
    folder: explaining a failure never fails itself."""
    text = "".join(traceback.format_exception(exc))
    run_dir = storage.run_directory(cfg)
    fallback = Path(tempfile.gettempdir()) / f"dist-contrast-{cfg.experiment.run_name}-error.txt"
    candidates = [fallback] if is_uri(run_dir) else [Path(run_dir) / "error.txt", fallback]
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        return str(path)
    return "not saved: no writable folder"
