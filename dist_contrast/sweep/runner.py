"""Running a sweep: one MLflow parent, one child run per trial, trials as Ray tasks.

The driver owns every MLflow run's life (opened before its trial starts, ended after it), so
nothing stays RUNNING: a failed trial ends FAILED with its one line as the tag
``dist_contrast.error`` and the others go on; Ctrl-C asks every running trial to checkpoint and
stop (a second Ctrl-C stops them at once) and marks them KILLED. Re-running the same sweep
skips the FINISHED children and runs the others again (from their checkpoints when they have
one).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_contrast.config import flatten
from dist_contrast.driver.address import cluster_address
from dist_contrast.driver.lifecycle import TrackedRun
from dist_contrast.driver.plan import RunPlan, make_plan
from dist_contrast.driver.runtime import connect, shutdown_ray, trial_slots
from dist_contrast.driver.signals import Interrupted, Signals
from dist_contrast.driver.trainer import start_trial
from dist_contrast.errors import RunFailed, UserError
from dist_contrast.progress import format_eta
from dist_contrast.sweep.grid import Trial
from dist_contrast.tracking import (
    ERROR_TAG,
    PARENT_TAG,
    default_tracking_uri,
    end_run,
    ensure_experiment,
    final_metrics,
    is_local_store,
    open_sweep_parent,
    set_run_tags,
    sweep_children,
)

BEST_METRIC = "eval/knn_acc"


@dataclass
class Outcome:
    """What became of one trial."""

    trial: Trial
    status: str  # FINISHED | FAILED | KILLED | SKIPPED (finished by an earlier run)
    run_id: str
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSummary:
    name: str
    parent_id: str
    tracking_uri: str
    experiment: str
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]


class Board:
    """The live summary: finished / running / failed / to go, and the best child so far."""

    def __init__(self, name: str, total: int, slots: int,
                 write: Callable[[str], None] | None = None) -> None:
        self.name, self.total, self.slots = name, total, slots
        self.done: list[Outcome] = []
        self.running: dict[str, float] = {}
        self.started = time.monotonic()
        self.durations: list[float] = []
        self.say = write or (lambda line: print(line, flush=True))

    def start(self, trial: Trial) -> None:
        self.running[trial.run_name] = time.monotonic()
        self.say(f"  start    {trial.label}")

    def finish(self, outcome: Outcome) -> None:
        began = self.running.pop(outcome.trial.run_name, None)
        if began is not None and outcome.status == "FINISHED":
            self.durations.append(time.monotonic() - began)
        self.done.append(outcome)
        value = outcome.metrics.get(BEST_METRIC)
        what = {"FINISHED": f"{BEST_METRIC} {value:.4f}" if value is not None else "finished",
                "SKIPPED": "finished before: kept",
                "FAILED": str(outcome.error),
                "KILLED": "KILLED"}[outcome.status]
        self.say(f"  {outcome.status.lower():<8} {outcome.trial.label}: {what}")
        if outcome.status != "SKIPPED":
            self.say(self.line())

    def count(self, *statuses: str) -> int:
        return sum(o.status in statuses for o in self.done)

    def best(self) -> Outcome | None:
        scored = [o for o in self.done if math.isfinite(o.metrics.get(BEST_METRIC, math.nan))]
        return max(scored, key=lambda o: o.metrics[BEST_METRIC]) if scored else None

    def line(self) -> str:
        finished = self.count("FINISHED", "SKIPPED")
        to_go = self.total - len(self.done) - len(self.running)
        parts = [f"[{self.name}] {finished}/{self.total} finished", f"{len(self.running)} running",
                 f"{self.count('FAILED')} failed", f"{to_go} to go"]
        if self.count("KILLED"):
            parts.append(f"{self.count('KILLED')} killed")
        if self.durations:
            left = (to_go + len(self.running)) * sorted(self.durations)[len(self.durations) // 2]
            parts.append(f"ETA {format_eta(left / max(1, self.slots))}")
        best = self.best()
        if best is not None:
            parts.append(f"best {BEST_METRIC} {best.metrics[BEST_METRIC]:.4f} ({best.trial.label})")
        return " | ".join(parts)


def run_sweep(
    trials: Sequence[Trial], *, name: str, grid_text: str, seeds: int,
    max_concurrent: int | None = None, write: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Run every trial not FINISHED before; return the outcomes. Raises :class:`Interrupted`
    on Ctrl-C / SIGTERM (every running child marked KILLED, the parent too)."""
    plans = _plan_all(trials)
    trials = [_resolved(t, plans[t.run_name]) for t in trials]
    first = trials[0].config
    uri, experiment = str(first.tracking.tracking_uri), first.tracking.experiment
    ensure_experiment(uri, experiment, Path.cwd() / "mlartifacts" if is_local_store(uri) else None)
    from dist_contrast.sweep.grid import digest

    parent_id, resumed = open_sweep_parent(
        uri, experiment, name, digest=digest(trials),
        params={**flatten(first), "sweep.grid": grid_text[:6000], "sweep.seeds": str(seeds),
                "sweep.trials": str(len(trials))},
        tags={"dist_contrast.sweep.grid": grid_text[:5000],
              "dist_contrast.sweep.seeds": str(seeds)},
    )
    children = sweep_children(uri, parent_id)
    board = Board(name, len(trials), 1, write)
    runner = _Runner(trials, plans, parent_id, uri, children, board)
    to_run = runner.skip_finished()
    if not to_run:
        board.say(f"sweep {name}: all {len(trials)} trials finished before; nothing to run")
    with Signals() as signals:
        try:
            ray = connect(plans[trials[0].run_name]) if to_run else None
            signals.claim()
            if ray is not None:
                slots = trial_slots(ray, first)
                board.slots = min(slots, max_concurrent or slots, len(to_run))
                board.say(f"sweep {name}: {len(to_run)} of {len(trials)} trials to run "
                             f"({seeds} seed(s) per grid point), {board.slots} at a time; "
                             f"parent run {parent_id}{' (resumed)' if resumed else ''} in {uri}")
                signals.run(lambda: runner.run(ray, to_run, board.slots),
                            on_first=runner.stop_all)
        except BaseException as exc:
            interrupted = signals.received is not None or isinstance(exc, KeyboardInterrupt)
            runner.kill_all(uri)
            reason = None if interrupted else (str(exc).splitlines() or [type(exc).__name__])[0]
            end_run(uri, parent_id, "KILLED" if interrupted else "FAILED", reason=reason)
            shutdown_ray()
            if not interrupted:
                raise
            raise _interrupted(name, signals.received or signal.SIGINT, board) from None
    shutdown_ray()
    if signals.received is not None:
        runner.kill_all(uri)
        end_run(uri, parent_id, "KILLED")
        raise _interrupted(name, signals.received, board)
    outcomes = [runner.outcomes[t.run_name] for t in trials]
    failed = [o for o in outcomes if o.status == "FAILED"]
    reason = (f"{len(failed)} child run(s) failed: "
              + ", ".join(o.trial.run_name for o in failed)) if failed else None
    if reason:
        set_run_tags(uri, parent_id, {ERROR_TAG: reason[:5000]})
    end_run(uri, parent_id, "FAILED" if failed else "FINISHED", reason=reason)
    return SweepSummary(name, parent_id, uri, experiment, outcomes)


class _Runner:
    """The scheduling loop (in a thread; the main thread keeps the signals)."""

    def __init__(self, trials: Sequence[Trial], plans: dict[str, RunPlan], parent_id: str,
                 uri: str, children: dict[str, tuple[str, str]], board: Board) -> None:
        self.trials, self.plans, self.parent_id, self.uri = list(trials), plans, parent_id, uri
        self.children, self.board = children, board
        self.outcomes: dict[str, Outcome] = {}
        # task ref -> trial, its MLflow run, its run channel
        self.running: dict[Any, tuple[Trial, TrackedRun, Any]] = {}
        self.stopping = False
        self.lock = threading.Lock()
        self.ray: Any = None

    def skip_finished(self) -> list[Trial]:
        """Record the trials an earlier run of the sweep finished; the others, to run."""
        to_run = []
        for trial in self.trials:
            run_id, status = self.children.get(trial.run_name, ("", ""))
            if status == "FINISHED":
                outcome = Outcome(trial, "SKIPPED", run_id,
                                  metrics=final_metrics(self.uri, run_id))
                self.outcomes[trial.run_name] = outcome
                self.board.finish(outcome)
            else:
                to_run.append(trial)
        return to_run

    def run(self, ray: Any, to_run: list[Trial], slots: int) -> None:
        self.ray = ray
        while (to_run or self.running) and not self.stopping:
            with self.lock:
                while to_run and len(self.running) < slots and not self.stopping:
                    self._start(to_run.pop(0))
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            for ref in ready:
                self._collect(ref)
        # Stopping: the running trials checkpoint and return; wait for them.
        while self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            for ref in ready:
                self._collect(ref)

    def _start(self, trial: Trial) -> None:
        # The child logs what a single run logs, plus its place in the sweep.
        tracked = TrackedRun(self.plans[trial.run_name],
                             tags={PARENT_TAG: self.parent_id, **trial.tags()})
        run_id = tracked.open()
        set_run_tags(self.uri, run_id, {PARENT_TAG: self.parent_id, ERROR_TAG: ""})
        ref, channel = start_trial(self.ray, trial.config, run_id)
        self.running[ref] = (trial, tracked, channel)
        self.board.start(trial)

    def _collect(self, ref: Any) -> None:
        with self.lock:
            trial, tracked, _ = self.running.pop(ref)
        run_id = str(tracked.run_id)
        try:
            status, error = self.ray.get(ref)
        except Exception as exc:  # the task itself died (e.g. cancelled, node lost)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            status, error = "FAILED", f"{type(exc).__name__}: {first[:200]}"
        metrics = final_metrics(self.uri, run_id)
        if status == "FINISHED" and metrics.get("step", 0) < trial.config.trainer.max_steps:
            status = "KILLED"  # stopped early on request
        if status == "FAILED":
            set_run_tags(self.uri, run_id, {ERROR_TAG: str(error)[:5000]})
        tracked.end(status, reason=error)
        outcome = Outcome(trial, status, run_id, error, metrics)
        self.outcomes[trial.run_name] = outcome
        self.board.finish(outcome)

    def stop_all(self) -> None:
        """First Ctrl-C: no new trials; the running ones checkpoint and stop."""
        self.stopping = True
        with self.lock:
            for _, _, channel in self.running.values():
                channel.request.remote()

    def kill_all(self, uri: str) -> None:
        """Second Ctrl-C (or a failure of the driver): cancel what still runs, mark it KILLED."""
        self.stopping = True
        with self.lock:
            running = list(self.running.items())
            self.running.clear()
        for ref, (trial, tracked, _) in running:
            if self.ray is not None:
                with contextlib.suppress(Exception):  # already gone
                    self.ray.cancel(ref, force=True)
            tracked.end("KILLED")
            self.outcomes[trial.run_name] = Outcome(trial, "KILLED", str(tracked.run_id))


def _resolved(trial: Trial, plan: RunPlan) -> Trial:
    return Trial(trial.source, trial.point, trial.seed, trial.run_name, plan.config)


def _plan_all(trials: Sequence[Trial]) -> dict[str, RunPlan]:
    """Every trial's plan (data, resources, checkpoint checked before anything starts), by run
    name; notes printed once."""
    local = cluster_address() is None
    seen: set[str] = set()
    plans = {}
    for trial in trials:
        try:
            plan = make_plan(trial.config, local=local)
        except UserError as exc:
            raise UserError(f"trial {trial.label}: {exc}") from None
        plans[trial.run_name] = plan
        for note in plan.notes:
            if note not in seen:
                seen.add(note)
                print(f"dist-contrast: note: {note}", flush=True)
    return plans


def _interrupted(name: str, signum: int, board: Board) -> Interrupted:
    finished = board.count("FINISHED", "SKIPPED")
    return Interrupted(
        f"sweep {name} stopped by {signal.Signals(signum).name} ({finished}/{board.total} "
        "finished; the running children were marked KILLED); re-run the same command to "
        "resume it", signum,
    )


def summary_lines(summary: SweepSummary) -> list[str]:
    """The end-of-sweep table: one line per trial, then what to do next."""
    lines = [f"sweep {summary.name}: parent run {summary.parent_id}"]
    width = max(len(o.trial.label) for o in summary.outcomes)
    for o in summary.outcomes:
        value = o.metrics.get(BEST_METRIC)
        score = f"{value:.4f}" if value is not None else "—"
        status = "FINISHED" if o.status == "SKIPPED" else o.status
        lines.append(f"  {o.trial.label:<{width}}  {status:<8}  {BEST_METRIC} {score}")
    if summary.failed:
        lines.append("failed: " + "; ".join(f"{o.trial.run_name}: {o.error}"
                                            for o in summary.failed))
    uri = ("" if summary.tracking_uri == default_tracking_uri()
           else f" --tracking-uri {summary.tracking_uri}")
    lines.append(f"compare it: dist-contrast compare {summary.parent_id}{uri}  (or all runs of "
                 f"the experiment: dist-contrast compare {summary.experiment}{uri})")
    return lines


def sweep_failed(summary: SweepSummary) -> RunFailed:
    names = ", ".join(o.trial.run_name for o in summary.failed)
    return RunFailed(f"sweep {summary.name}: {len(summary.failed)} of {len(summary.outcomes)} "
                     f"children failed ({names}); fix the cause and re-run the same command "
                     "to run them again")

