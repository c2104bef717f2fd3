"""One training run from the driver: the plan, Ray, the MLflow run, the workers, the end.

``run_training`` checks what it can before anything starts (:mod:`dist_contrast.driver.plan`),
starts or joins Ray while it checks the MLflow experiment, opens the MLflow run, runs the
workers, and marks the run FAILED or KILLED when it does not finish. SIGINT and SIGTERM stop
the workers after the current step with a checkpoint (a second signal stops at once) and raise
:class:`~dist_contrast.driver.signals.Interrupted`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_contrast.config import Config
from dist_contrast.driver.address import check_reachable, cluster_address
from dist_contrast.driver.failure import explain_failure
from dist_contrast.driver.lifecycle import TrackedRun
from dist_contrast.driver.plan import RunPlan, make_plan
from dist_contrast.driver.runtime import connect, shutdown_ray, use_gpu
from dist_contrast.driver.signals import Interrupted, Signals
from dist_contrast.driver.trainer import TrainLoop, build_trainer
from dist_contrast.errors import RunFailed
from dist_contrast.progress import ChannelReader, ProgressDisplay, RunChannel
from dist_contrast.timing import mark
from dist_contrast.tracking import ensure_experiment, final_metrics, is_local_store
from dist_contrast.train import storage


@dataclass(frozen=True)
class TrainingSummary:
    run_name: str
    run_id: str | None
    tracking_uri: str
    checkpoint_path: str | None
    metrics: dict[str, float]


def run_training(cfg: Config, train_loop: TrainLoop | None = None) -> TrainingSummary:
    """Run one experiment end to end and return its summary (raises UserError on user mistakes).

    ``train_loop`` replaces the per-worker function (default
    :func:`dist_contrast.train.entry.train_loop_per_worker`); a wrapper that registers an
    objective, a negative source or a dataset on the worker and then calls the default is how
    code outside the package plugs in.
    """
    mark("driver_start")
    address = cluster_address()
    if address is not None:  # in seconds, before anything is written
        check_reachable(address)
    plan = make_plan(cfg, local=address is None)
    mark("preflight")
    for note in plan.notes:
        print(f"dist-contrast: note: {note}", flush=True)
    cfg, uri = plan.config, plan.tracking_uri
    artifacts = Path.cwd() / "mlartifacts" if is_local_store(uri) else None
    with Signals() as signals, TrackedRun(plan) as tracked:
        try:
            # The MLflow experiment is checked (or created) while Ray starts: its failure is
            # raised once Ray is up, and the except below shuts Ray down again.
            with ThreadPoolExecutor(1, thread_name_prefix="mlflow-check") as background:
                experiment = background.submit(ensure_experiment, uri, cfg.tracking.experiment,
                                               artifacts)
                ray = connect(plan)
                mark("ray_init")
                experiment.result()
            mark("mlflow_experiment")
            signals.claim()
            run_id = tracked.open()
            mark("mlflow_run")
            _run_workers(ray, plan, run_id, signals, train_loop)
            mark("workers_done")
        except BaseException as exc:
            interrupted = signals.received is not None or isinstance(exc, KeyboardInterrupt)
            try:  # explained first: the run's description ends with the failure's one line
                failure = None if interrupted else explain_failure(exc, cfg)
            finally:
                shutdown_ray()
            if failure is None:
                raise _interrupted(plan, signals.received or signal.SIGINT, None) from None
            raise failure from None
        shutdown_ray()
        mark("ray_shutdown")
        # From the MLflow run: Ray keeps the metrics of registered checkpoints only, and the
        # checkpoints are ours.
        metrics = final_metrics(uri, run_id)
        if signals.received is not None:
            raise _interrupted(plan, signals.received, metrics.get("step"))
        tracked.end("FINISHED")  # rank 0 has marked it; in case it could not
    newest = storage.newest_complete(plan.run_dir)
    return TrainingSummary(
        run_name=plan.run_name,
        run_id=run_id,
        tracking_uri=uri,
        checkpoint_path=newest.path if newest is not None else None,
        metrics=metrics,
    )


def _run_workers(
    ray: Any, plan: RunPlan, run_id: str, signals: Signals, train_loop: TrainLoop | None,
) -> None:
    """Run the TorchTrainer on the Ray runtime ``ray`` is connected to."""
    cfg = plan.config
    channel = ray.remote(num_cpus=0)(RunChannel).remote()
    trainer = build_trainer(cfg, use_gpu(cfg, ray), run_id=run_id, channel=channel,
                            resume_from=plan.resume_source, train_loop=train_loop)
    display = ProgressDisplay(
        ChannelReader(ray, channel), total=cfg.trainer.max_steps,
        phase=f"starting {_workers(cfg.trainer.num_workers)} (Ray Train)",
    )
    display.start()
    try:
        signals.run(trainer.fit, on_first=lambda: channel.request.remote(),
                    watch=start_watch(display, cfg.trainer.start_timeout_s, _logs_hint(ray)))
    finally:
        display.stop()
        ray.kill(channel)


def _workers(count: int) -> str:
    return f"{count} worker" + ("s" if count != 1 else "")


class StartTimeout(RunFailed):
    """The workers sent no news for ``trainer.start_timeout_s`` while starting."""


def start_watch(display: ProgressDisplay, timeout_s: float, logs: str) -> Callable[[], None]:
    """A check that raises :class:`StartTimeout` once the workers have been silent for
    ``timeout_s`` seconds in one start-up stage (0: never)."""

    def watch() -> None:
        silent = display.stalled()
        if timeout_s and silent > timeout_s:
            raise StartTimeout(
                f"the workers sent nothing for {silent:.0f} s while {display.phase!r} "
                f"(trainer.start_timeout_s={timeout_s:g}); see their logs ({logs}: "
                "worker-*.err, raylet.err), or raise trainer.start_timeout_s (0 waits forever) "
                "where the cluster needs longer to start them"
            )

    return watch


def _logs_hint(ray: Any) -> str:
    """Where the workers' logs are: this machine's Ray session folder for a local runtime."""
    if cluster_address() is not None:
        return "`ray logs` or the Ray dashboard of the cluster"
    try:
        return str(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # a private API: the default place instead
        return "/tmp/ray/session_latest/logs"


def _interrupted(plan: RunPlan, signum: int, step: float | None) -> Interrupted:
    kept = storage.newest_complete(plan.run_dir)
    saved = f"checkpoint at step {kept.step} kept" if kept else "no checkpoint saved"
    at = f" at step {int(step)}" if step is not None else ""
    return Interrupted(
        f"stopped by {signal.Signals(signum).name}{at} ({saved}; MLflow run marked KILLED); "
        f"continue it with the same command and experiment.run_name={plan.run_name}",
        signum,
    )
