"""CPUs, GPUs and memory: what this machine or the Ray cluster has against what the run
needs (the estimate of :mod:`dist_contrast.preflight.memory`), and a model too big for CPU
workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dist_contrast.config import Config
from dist_contrast.errors import UserError
from dist_contrast.negatives.registry import (
    source_names,
    source_spec,
)
from dist_contrast.preflight.data import check_model_size
from dist_contrast.preflight.memory import LOCAL_RAY_BYTES, estimate_memory, host_bytes, human_bytes

# Locally Ray lets the workers time-share the cores; beyond this many worker CPUs per core a
# run spends its time switching between them.
LOCAL_OVERSUBSCRIPTION = 4


# Above this share of the available memory the estimate is printed as a note.
TIGHT_SHARE = 0.75


def local_resources() -> tuple[float, float, int]:
    """This machine's CPUs, GPUs and available memory in bytes (``MemAvailable``)."""
    return float(os.cpu_count() or 1), float(torch.cuda.device_count()), available_memory()


def meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes (``MemAvailable``, ``MemTotal``); None where the
    file or the field is missing (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory() -> int:
    """Bytes the kernel could give new processes without swapping (``MemAvailable``)."""
    available = meminfo("MemAvailable")
    if available is not None:
        return available
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_resources(
    cfg: Config,
    *,
    cpus: float,
    gpus: float,
    memory_bytes: int,
    local: bool,
    train_size: int,
    input_shape: tuple[int, ...],
) -> list[str]:
    """Refuse (one ``UserError`` line) a run this machine or cluster cannot hold; else notes.

    ``cpus``/``gpus``/``memory_bytes``: locally :func:`local_resources`; on a cluster Ray's
    ``cluster_resources()`` ``CPU``, ``GPU`` and ``memory``. ``train_size``/``input_shape``:
    the training rows and one row's input shape (the plan's data summary).
    """
    notes = _check_cpus(cfg, cpus, local)
    on_gpu, gpu_notes = _check_gpus(cfg, gpus, local)
    check_model_size(cfg, input_shape, on_gpu)
    notes += gpu_notes
    notes += _check_memory(cfg, memory_bytes, local, on_gpu, train_size, input_shape)
    return notes


def _check_cpus(cfg: Config, cpus: float, local: bool) -> list[str]:
    trainer = cfg.trainer
    need = cfg.cpus_needed
    tasks = need - trainer.num_workers * trainer.cpus_per_worker
    asked = (
        f"trainer.num_workers={trainer.num_workers} × trainer.cpus_per_worker="
        f"{trainer.cpus_per_worker:g}" + (f" + {tasks:g} for the negative sources' Ray tasks"
                                          if tasks else "") + f" = {need:g} CPUs"
    )
    if not local:
        if need > cpus:
            raise UserError(
                f"{asked}, but the Ray cluster has {cpus:g}; lower them or add nodes"
            )
        return []
    limit = cpus * LOCAL_OVERSUBSCRIPTION
    if need > limit:
        raise UserError(
            f"{asked} on a machine with {cpus:g} cores (at most {limit:g} can time-share them); "
            "lower trainer.num_workers or run on a Ray cluster (RAY_ADDRESS)"
        )
    if need > cpus:
        return [f"{asked} time-share {cpus:g} cores: each worker runs slower"]
    return []


def _check_gpus(cfg: Config, gpus: float, local: bool) -> tuple[bool, list[str]]:
    """Whether the workers will train on GPUs (the trainer section's rule), and a note or
    refusal."""
    workers, use_gpu = cfg.trainer.num_workers, cfg.trainer.use_gpu
    where = "on this machine" if local else "in the Ray cluster"
    if use_gpu == "true" and gpus < workers:
        raise UserError(
            f"trainer.use_gpu=true needs one GPU per worker, {workers} for "
            f"trainer.num_workers={workers}, but there are {gpus:g} {where}; lower "
            "trainer.num_workers or set trainer.use_gpu=auto"
        )
    on_gpu = cfg.trainer.trains_on_gpu(gpus)
    notes = []
    if use_gpu == "auto" and 0 < gpus < workers:
        notes.append(
            f"trainer.use_gpu=auto: {gpus:g} GPUs {where} for {workers} workers, so the "
            "workers train on the CPU"
        )
    if on_gpu:
        notes.append("memory check: host memory only; the GPUs' memory is not checked")
    return on_gpu, notes


def _check_memory(
    cfg: Config, available: int, local: bool, on_gpu: bool, rows: int, shape: tuple[int, ...]
) -> list[str]:
    workers = cfg.trainer.num_workers
    overhead = LOCAL_RAY_BYTES if local else 0
    terms = [term for term in estimate_memory(cfg, train_size=rows, input_shape=shape)
             if not (on_gpu and term.on_device)]
    per_worker = sum(term.bytes for term in terms)
    total = workers * per_worker + overhead
    if total <= TIGHT_SHARE * available:
        return []
    if total <= available:
        return [f"memory: the estimate, {human_bytes(total)}, is close to the "
                f"{human_bytes(available)} available"]
    biggest = max(terms, key=lambda term: term.bytes)
    twice = any(term.what == f"the checkpoint copy of {biggest.what}" for term in terms)
    ray = f" + {human_bytes(overhead)} for Ray" if overhead else ""
    message = (
        f"memory: {workers} workers × ~{human_bytes(per_worker)}{ray} = {human_bytes(total)} "
        f"exceed the {human_bytes(available)} available; the biggest part is {biggest.what}, "
        f"{human_bytes(biggest.bytes)} per worker"
        f"{' (twice that while checkpointing)' if twice else ''}: {biggest.fix}"
    )
    hint = _sharding_hint(cfg, available - overhead, on_gpu, rows, shape)
    raise UserError(message + (f"; {hint}" if hint else ""))


def _sharding_hint(
    cfg: Config, available: int, on_gpu: bool, rows: int, shape: tuple[int, ...]
) -> str:
    """Say so when sharding the queue or the miner's index (still replicated) would fit."""
    negatives, workers = cfg.negatives, cfg.trainer.num_workers
    if workers < 2:
        return ""
    hints: list[tuple[str, dict[str, Any]]] = []
    for name in source_names():  # each configured source that could be sharded, in order
        spec = source_spec(name)
        if name in negatives.sources and spec.sharding is not None:
            sharded = spec.sharding(negatives.settings_of(name), cfg.loss_needs())
            if sharded is not None:
                hints.append((sharded[0], {spec.key: sharded[1]}))
    for setting, update in hints:
        changed = cfg.model_copy(update={"negatives": negatives.model_copy(update=update)})
        per_worker = host_bytes(
            estimate_memory(changed, train_size=rows, input_shape=shape), on_gpu
        )
        if workers * per_worker <= available:
            return f"{setting} would fit (~{human_bytes(per_worker)} per worker)"
    return ""
