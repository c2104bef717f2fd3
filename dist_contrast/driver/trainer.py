"""The Ray Train trainer of a run: ``ray.train.torch.TorchTrainer`` with ``trainer.num_workers``
workers, each running the per-worker loop (which builds a DeepSpeed engine), and the same
trainer started as a Ray task for a sweep's trial."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dist_contrast.config import Config
from dist_contrast.driver.failure import explain_failure
from dist_contrast.driver.runtime import use_gpu
from dist_contrast.progress import RunChannel

TrainLoop = Callable[[dict[str, Any]], None]


def worker_env(gpu: bool, cfg: Config) -> dict[str, str]:
    """The environment of every worker process."""
    env = {
        "OMP_NUM_THREADS": str(cfg.trainer.threads_per_worker),
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on CPU: gloo backend, no CUDA probing
    return env


def build_trainer(
    cfg: Config, gpu: bool, *, run_id: str, channel: Any, resume_from: str | None,
    train_loop: TrainLoop | None = None,
) -> Any:
    """The TorchTrainer for ``cfg`` (resolved); every worker runs ``train_loop`` (by default
    ``train_loop_per_worker``) with the config, the MLflow run id, the run channel (progress to
    the driver, the driver's stop request to rank 0) and the checkpoint to start from."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from dist_contrast.train.entry import train_loop_per_worker

    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "run_id": run_id,
        "channel": channel,
        # Ray Train V2 has no resume_from_checkpoint: the workers load this path themselves
        # when the run has no newer checkpoint of its own.
        "resume_from": resume_from,
    }
    return TorchTrainer(
        train_loop or train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.trainer.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cfg.trainer.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.experiment.run_name,
            storage_path=cfg.experiment.output_dir,
            failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
            # Ray Train V2's RunConfig; mypy sees the V1 class of the same name.
            worker_runtime_env={"env_vars": worker_env(gpu, cfg)},  # type: ignore[call-arg]
        ),
    )


# A sweep (dist_contrast/sweep) runs many trainings on one Ray runtime: each trial is a Ray task
# that runs one TorchTrainer, so trials share the cluster like any jobs.


def start_trial(ray: Any, cfg: Config, run_id: str) -> tuple[Any, Any]:
    """Start one training of ``cfg`` logging to ``run_id`` as a Ray task; returns the task's
    result reference and its run channel (an actor: ``channel.request.remote()`` asks its
    workers to checkpoint and stop after the current step)."""
    channel = ray.remote(num_cpus=0)(RunChannel).remote()
    task = ray.remote(num_cpus=0, max_retries=0)(_run_trial).options(
        runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}},
        name=f"trial:{cfg.experiment.run_name}",
    )
    return task.remote(cfg.model_dump(mode="json"), run_id, channel), channel


def _run_trial(config: dict[str, Any], run_id: str, channel: Any) -> tuple[str, str | None]:
    """In a Ray task: one TorchTrainer run; ``("FINISHED", None)`` or ``("FAILED", line)``."""
    import ray

    cfg = Config.model_validate(config)  # resolved on the driver: absolute paths
    try:
        build_trainer(cfg, use_gpu(cfg, ray), run_id=run_id, channel=channel,
                      resume_from=cfg.trainer.resume_from).fit()
    except Exception as exc:
        return "FAILED", str(explain_failure(exc, cfg))
    return "FINISHED", None
