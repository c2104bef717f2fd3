"""Orchestration: Ray lives here (and only ``ray.train``'s per-worker calls in the trainer).

With no cluster, ``run_training`` starts a local Ray runtime in-process; with ``RAY_ADDRESS``
set it joins that cluster. Either way it runs ``ray.train.torch.TorchTrainer`` with
``trainer.num_workers`` workers, each of which builds a DeepSpeed engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_contrast.config import Config, flatten, to_yaml
from dist_contrast.errors import UserError
from dist_contrast.progress import ProgressDisplay
from dist_contrast.tracking import default_tracking_uri, ensure_experiment, find_run_id


@dataclass(frozen=True)
class TrainingSummary:
    run_name: str
    run_id: str | None
    tracking_uri: str
    checkpoint_path: str | None
    metrics: dict[str, float]


def resolve(cfg: Config) -> Config:
    """Fill what depends on where we run: run name, absolute output dir, tracking URI."""
    run_name = cfg.experiment.run_name or f"{cfg.experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    output_dir = _local_or_uri(cfg.experiment.output_dir)
    tracking_uri = cfg.tracking.tracking_uri or default_tracking_uri()
    return cfg.model_copy(
        update={
            "experiment": cfg.experiment.model_copy(
                update={"run_name": run_name, "output_dir": output_dir}
            ),
            "tracking": cfg.tracking.model_copy(update={"tracking_uri": tracking_uri}),
        }
    )


def preflight(cfg: Config) -> None:
    """Catch user mistakes on the driver, before any worker starts (a clear line, no traceback)."""
    from dist_contrast.data import DataError, build_data

    try:
        build_data(cfg.data, seed=cfg.experiment.seed)
    except DataError as exc:
        raise UserError(str(exc)) from None
    resume = cfg.trainer.resume_from
    if resume is not None and "://" not in resume and not Path(resume).is_dir():
        raise UserError(
            f"trainer.resume_from '{cfg.trainer.resume_from}' is not a checkpoint folder; "
            "pass a checkpoint_* folder from a previous run's results"
        )


def _enable_token_auth_if_available() -> None:
    """Ray 2.5x clusters authenticate with a token; a client sends it only in token mode."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at the address."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return
    if address.startswith(("http://", "https://")):
        raise UserError(
            f"RAY_ADDRESS={address} is a job-server URL; use it with `ray job submit` "
            "(launch/submit.sh), or set RAY_ADDRESS to the head's GCS address host:6379"
        )
    parsed = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 6379), timeout=5):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc.strerror or exc}); "
            "start it or unset RAY_ADDRESS to run locally"
        ) from None


def _use_gpu(cfg: Config, ray: Any) -> bool:
    if cfg.trainer.use_gpu != "auto":
        return cfg.trainer.use_gpu == "true"
    return float(ray.cluster_resources().get("GPU", 0)) >= cfg.trainer.num_workers


def _start_ray(cfg: Config) -> Any:
    import logging

    if os.environ.get("RAY_ADDRESS"):
        _check_reachable(os.environ["RAY_ADDRESS"])
        _enable_token_auth_if_available()  # read by Ray when it is imported

    import ray

    needed = cfg.trainer.num_workers * cfg.trainer.cpus_per_worker
    if os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(logging_level=logging.WARNING, log_to_driver=cfg.trainer.show_worker_logs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} "
                f"({str(exc).splitlines()[0][:160]}); start it, give its token (RAY_AUTH_TOKEN or "
                "~/.ray/auth_token), or unset RAY_ADDRESS to run locally"
            ) from None
        available = float(ray.cluster_resources().get("CPU", 0))
        if available < needed:
            raise UserError(
                f"the Ray cluster has {available:g} CPUs but trainer.num_workers="
                f"{cfg.trainer.num_workers} x trainer.cpus_per_worker="
                f"{cfg.trainer.cpus_per_worker:g} need more; lower them or add nodes"
            )
    else:
        # Local: make room for every worker even on a 2-core laptop (they time-share).
        num_cpus = max(os.cpu_count() or 1, int(needed + 0.999))
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=cfg.trainer.show_worker_logs,
            configure_logging=True,
        )
    return ray


def _worker_env(use_gpu: bool, cfg: Config) -> dict[str, str]:
    env = {
        "OMP_NUM_THREADS": str(cfg.trainer.threads_per_worker),
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on CPU: gloo backend, no CUDA probing
    return env


def run_training(
    cfg: Config, train_loop: Callable[[dict[str, Any]], None] | None = None
) -> TrainingSummary:
    """Run one experiment end to end and return its summary (raises UserError on user mistakes).

    ``train_loop`` replaces the per-worker function (default
    :func:`dist_contrast.train.entry.train_loop_per_worker`); a wrapper that registers an
    objective or negative source on the worker and then calls the default is how code outside
    the package plugs in.
    """
    cfg = resolve(cfg)
    preflight(cfg)
    uri = str(cfg.tracking.tracking_uri)
    local_store = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    ensure_experiment(
        uri, cfg.tracking.experiment, Path.cwd() / "mlartifacts" if local_store else None
    )
    ray = _start_ray(cfg)
    from ray.util.queue import Queue

    queue = Queue()
    trainer = _trainer(cfg, _use_gpu(cfg, ray), queue, train_loop)
    display = ProgressDisplay(queue, total=cfg.trainer.max_steps)
    display.start()
    try:
        result = trainer.fit()
    except Exception as exc:
        raise _explain_failure(exc) from None
    finally:
        display.stop()
        queue.shutdown()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainingSummary(
        run_name=str(cfg.experiment.run_name),
        run_id=find_run_id(
            str(cfg.tracking.tracking_uri), cfg.tracking.experiment, str(cfg.experiment.run_name)
        ),
        tracking_uri=str(cfg.tracking.tracking_uri),
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
        metrics=metrics,
    )


def _local_or_uri(path: str) -> str:
    """Local paths become absolute (workers run elsewhere); URIs (s3://, gs://) stay as given."""
    return path if "://" in path else str(Path(path).resolve())


def _trainer(
    cfg: Config, use_gpu: bool, queue: Any,
    train_loop: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """The TorchTrainer for ``cfg``; every worker runs ``train_loop`` (by default
    ``train_loop_per_worker``)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dist_contrast.train.entry import train_loop_per_worker

    resume = cfg.trainer.resume_from
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "params": flatten(cfg),
        "config_yaml": to_yaml(cfg),
        "progress_queue": queue,
        # Ray Train V2 has no resume_from_checkpoint: the workers load this path themselves
        # when Ray offers no newer checkpoint of this run (get_checkpoint() wins).
        "resume_from": _local_or_uri(resume) if resume else None,
    }
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.trainer.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.trainer.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.experiment.run_name,
            storage_path=cfg.experiment.output_dir,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
            # Ray Train V2's RunConfig; mypy sees the V1 class of the same name.
            worker_runtime_env={"env_vars": _worker_env(use_gpu, cfg)},  # type: ignore[call-arg]
        ),
    )


def _explain_failure(exc: BaseException) -> BaseException:
    """A worker's UserError becomes the driver's UserError; anything else is re-raised as is."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, UserError):
            return UserError(str(current))
        stack.extend([current.__cause__, current.__context__])
        stack.extend(getattr(current, "worker_failures", {}).values())
        for attr in ("cause", "error"):
            stack.append(
                getattr(current, attr, None)
                if isinstance(getattr(current, attr, None), BaseException)
                else None
            )
    return exc
