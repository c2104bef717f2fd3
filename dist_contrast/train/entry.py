"""The Ray entry point: what ``ray.train.torch.TorchTrainer`` runs on every worker.

Ray appears in the trainer only here and as the ``train`` module handed to
:meth:`Worker.run <dist_contrast.train.worker.Worker.run>` (report, checkpoints):
:func:`run_worker` takes that module as an argument, so the same loop runs without Ray in a
plain process group (the tests do). The driver
owns the MLflow run (it opens it, and marks it FAILED or KILLED when the run does not finish);
every attempt of the worker group, first or after a restart, logs to that run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dist_contrast import dist
from dist_contrast.config import Config
from dist_contrast.timing import mark
from dist_contrast.train import checkpoint, storage
from dist_contrast.train.state import check_safe_to_load, load_trainer_state
from dist_contrast.train.worker import Worker, build_worker


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Build this rank's worker (restoring the newest checkpoint when there is one) and train."""
    import ray.train

    run_worker(loop_config, ray.train)


def run_worker(loop_config: dict[str, Any], train: Any) -> None:
    """This rank's whole run: ``train`` is ``ray.train`` (``report`` and ``Checkpoint``), and
    ``loop_config`` holds the resolved config, the MLflow run id, the run channel (None: no
    progress line and no stop request) and the checkpoint to start from."""
    mark("worker_start")
    cfg = Config.model_validate(loop_config["config"])
    torch.set_num_threads(cfg.trainer.threads_per_worker)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.trainer.threads_per_worker))
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.trainer.deterministic:
        make_deterministic(cfg.experiment.seed)

    channel = loop_config.get("channel")
    _announce(channel, f"workers up ({dist.world_size()}): building the data, the model and the "
              "DeepSpeed engine")
    worker = _resume_or_build(cfg, loop_config, train, channel)
    _announce(channel, "DeepSpeed engine ready: the first step")
    worker.reporter.start(worker.step.engine.module)
    mark("reporter_start")
    if worker.run(train, should_stop=_stop_poller(channel)):
        # Every rank: the weights are gathered.
        worker.reporter.finish(worker.trained_encoder(), worker.step.penalty_snapshots)
    mark("worker_done")


def _announce(channel: Any, phase: str) -> None:
    """Rank 0 tells the driver which start-up stage it has reached (best effort)."""
    if channel is not None and dist.is_rank_zero():
        with contextlib.suppress(Exception):
            channel.put.remote({"phase": phase})  # the display prints it


def make_deterministic(seed: int) -> None:
    """Seed every generator and allow only deterministic algorithms (``trainer.deterministic``)."""
    # cuBLAS needs a fixed workspace to be deterministic (ignored on CPU).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def _stop_poller(channel: Any, every_s: float = 1.0) -> Callable[[], bool]:
    """Asks the run channel (a Ray actor) for the driver's stop request at most every
    ``every_s`` seconds."""
    if channel is None:
        return lambda: False
    import ray

    last = {"asked": 0.0, "answer": False}

    def should_stop() -> bool:
        now = time.monotonic()
        if not last["answer"] and now - float(last["asked"]) >= every_s:
            last["asked"] = now
            # Bounded: a channel that does not answer is no stop request; ask again later.
            with contextlib.suppress(ray.exceptions.GetTimeoutError):
                last["answer"] = bool(ray.get(channel.is_set.remote(), timeout=30))
        return bool(last["answer"])

    return should_stop


class ChannelWriter:
    """Rank 0's side of the driver's :class:`~dist_contrast.progress.RunChannel` (a Ray actor):
    the queue the reporter writes to, whose ``put_nowait`` sends without waiting."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def put_nowait(self, update: dict[str, Any]) -> None:
        self._channel.put.remote(update)


def _resume_or_build(cfg: Config, loop_config: dict[str, Any], train: Any,
                     channel: Any) -> Worker:
    """This rank's worker, restored from the newest complete checkpoint of the run (written
    before a restart or a re-run), else from ``resume_from``, else new."""
    run_id = loop_config["run_id"]
    writer = ChannelWriter(channel) if channel is not None else None
    run_dir = storage.run_directory(cfg)
    # Newest first, again here: after a restart the run has checkpoints the driver never saw.
    source = storage.resume_source(run_dir, loop_config.get("resume_from"))
    if source is None:
        return build_worker(cfg, writer, run_id=run_id)
    if dist.is_rank_zero():
        # A checkpoint a crash interrupted after the one we resume from would be mixed with
        # the replayed steps' files: remove it first.
        storage.prune(run_dir, cfg.checkpoint.num_to_keep, newer_than=storage.step_of(source))
    dist.barrier()
    # One download and one read of the trainer state (it holds the pools, e.g. a bank of
    # every instance's key).
    with train.Checkpoint(source).as_directory() as directory:
        # DeepSpeed unpickles its files without restriction: only files that load with
        # weights_only=True get that far.
        check_safe_to_load(directory, rank=dist.rank())
        state = load_trainer_state(directory, dist.rank())
        worker = build_worker(cfg, writer, run_id=run_id)
        checkpoint.restore(worker.step, worker.progress, directory, state)
    return worker

