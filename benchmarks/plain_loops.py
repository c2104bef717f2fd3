"""The training loops the ``train`` suite compares our Ray + DeepSpeed step with, each in W
gloo processes (``torch.multiprocessing``), timed phase by phase on rank 0.

* ``ddp``: what a user writes with plain PyTorch: ``DistributedDataParallel`` over the same
  encoder (``dist_contrast.models.build_model``), a ``DataLoader`` with a
  ``DistributedSampler`` over the same dataset, the keys gathered with gradient
  (``torch.distributed.nn.functional.all_gather``), the same loss function
  (``dist_contrast.losses.info_nce``, the config's tile size), AdamW with the config's
  learning rate, betas, weight decay and gradient clipping, a warm-up + cosine ``LambdaLR``,
  and ``loss.item()`` every step.
* ``lightly``: what a user writes with the lightly package (MoCo): the same DDP encoder, a
  momentum copy kept by ``lightly.models.utils.update_momentum``, and lightly's
  ``NTXentLoss(memory_bank_size=(K, D), gather_distributed=True)``, whose memory bank is the
  queue of the K newest keys of every worker. Run with an interpreter that has lightly.
* ``ours``: our real worker (``build_worker``: DeepSpeed engine, ``TrainStep``, pools, the
  rank-0 ``Reporter`` logging to a scratch MLflow store) and its own loop ``Worker.run``, in
  the same gloo processes but without Ray (the progress queue is a local queue, the stop
  signal is never asked). Its phases are timed by wrapping the step's own methods.

Every kind takes the experiment as ``CONFIG key=value ...``, so model, data, batch, negatives
and threads are the same. Rank 0 writes ``--out``: the mean step time of each window of
``trainer.log_every`` steps after ``--warmup`` steps (the Ray run's ``train/samples_per_s`` has
the same windows) and the per-step median of each phase.

    python benchmarks/plain_loops.py ddp configs/synthetic.yaml trainer.max_steps=60 --out r.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dist_contrast.config import Config, load_config  # noqa: E402

KINDS = ("ddp", "lightly", "ours")


class Phases:
    """Seconds spent in each named phase of the current step; closed once per step."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.ends: list[float] = []

    def add(self, name: str, seconds: float) -> None:
        self.current[name] += seconds

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)
        return wrapper

    def close_step(self) -> None:
        self.steps.append(dict(self.current))
        self.ends.append(time.perf_counter())
        self.current = defaultdict(float)

    def summary(self, warmup: int, window: int) -> dict[str, Any]:
        """Mean step seconds of each full window of ``window`` steps after ``warmup`` steps
        and before the last step (whose end-of-run evaluation is no step), and the median of
        each phase, and of the whole step, over the steps after the warm-up."""
        ends, warmup = self.ends, max(1, warmup)
        windows = [(ends[first + window - 1] - ends[first - 1]) / window
                   for first in range(warmup, len(ends) - window, window)]
        kept = range(warmup, len(ends) - 1)
        names = sorted({name for i in kept for name in self.steps[i]})
        phases = {name: statistics.median(self.steps[i].get(name, 0.0) for i in kept)
                  for name in names}
        total = statistics.median(ends[i] - ends[i - 1] for i in kept)
        return {"window_step_seconds": windows, "phase_seconds": phases,
                "step_seconds": total, "steps": len(ends)}


class TimedLoader:
    """A loader (or any iterable) whose every ``next`` counts as the ``data`` phase."""

    def __init__(self, inner: Any, phases: Phases) -> None:
        self.inner, self.phases = inner, phases

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        items = iter(self.inner)
        while True:
            start = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.phases.add("data", time.perf_counter() - start)
            yield item


def _lr_lambda(cfg: Config) -> Callable[[int], float]:
    """Linear warm-up then cosine to ``min_lr_ratio``, as the DeepSpeed config's schedule."""
    opt, total = cfg.optimizer, cfg.trainer.max_steps
    warmup = max(1, min(opt.warmup_steps, total - 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if opt.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _batches(cfg: Config, dataset: Any, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
    """A plain DataLoader over a DistributedSampler, epoch after epoch."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.experiment.seed,
        drop_last=True)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        yield from DataLoader(dataset, batch_size=cfg.trainer.batch_size, sampler=sampler,
                              drop_last=True)
        epoch += 1


def _plain_loop(kind: str, cfg: Config, rank: int, world: int, phases: Phases) -> None:
    """The ddp or lightly loop for ``cfg.trainer.max_steps`` steps."""
    from torch.distributed.nn.functional import all_gather

    # The well-known differentiable gather; torch 2.13 calls it deprecated.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_gather")
    from torch.nn.parallel import DistributedDataParallel

    from dist_contrast.data import build_data
    from dist_contrast.losses import info_nce
    from dist_contrast.models import build_model

    torch.manual_seed(cfg.experiment.seed)
    data = build_data(cfg.data, seed=cfg.experiment.seed)
    encoder = build_model(cfg.model, data.input_shape)
    model = DistributedDataParallel(encoder)
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=opt.betas, eps=1e-8,
                                  weight_decay=opt.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    tau, clip = cfg.loss.temperature, cfg.deepspeed.gradient_clipping
    batch_size = cfg.trainer.batch_size
    if kind == "lightly":
        from lightly.loss import NTXentLoss
        from lightly.models.utils import deactivate_requires_grad, update_momentum

        momentum_encoder = copy.deepcopy(encoder)
        deactivate_requires_grad(momentum_encoder)
        criterion = NTXentLoss(temperature=tau, gather_distributed=True,
                               memory_bank_size=(cfg.negatives.queue.size,
                                                 cfg.model.embedding_dim))
    positive_index = rank * batch_size + torch.arange(batch_size)
    batches = iter(TimedLoader(_batches(cfg, data.train, rank, world), phases))
    for _ in range(cfg.trainer.max_steps):
        batch = next(batches)
        start = time.perf_counter()
        query = model(batch["view1"])
        if kind == "lightly":
            with torch.no_grad():
                update_momentum(encoder, momentum_encoder, m=cfg.negatives.momentum)
                key = momentum_encoder(batch["view2"])
            phases.add("forward", time.perf_counter() - start)
            start = time.perf_counter()
            loss = criterion(query, key)  # gathers the keys into its bank itself
            phases.add("loss (+ gather, bank)", time.perf_counter() - start)
        else:
            key = model(batch["view2"])
            phases.add("forward", time.perf_counter() - start)
            start = time.perf_counter()
            keys = torch.cat(all_gather(key))
            phases.add("gather", time.perf_counter() - start)
            start = time.perf_counter()
            loss = info_nce(query, keys, temperature=tau, positive_index=positive_index,
                            tile_size=cfg.loss.tile_size)
            phases.add("loss", time.perf_counter() - start)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        phases.add("backward (+ all-reduce)", time.perf_counter() - start)
        start = time.perf_counter()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        phases.add("optimizer", time.perf_counter() - start)
        start = time.perf_counter()
        float(loss.item())
        phases.add("logging", time.perf_counter() - start)
        phases.close_step()


def _our_loop(cfg: Config, phases: Phases) -> None:
    """Our worker and its own loop, phases timed by wrapping the real methods. Checkpoints
    are not written (the Ray run's measured windows hold none either)."""
    import queue

    from dist_contrast import dist
    from dist_contrast.train.worker import build_worker

    progress: queue.Queue[Any] = queue.Queue()
    worker = build_worker(cfg, progress, run_id=None)
    step, reporter = worker.step, worker.reporter
    engine = step.engine
    engine.forward = phases.timed("forward", engine.forward)
    engine.backward = phases.timed("backward (+ all-reduce)", engine.backward)
    engine.step = phases.timed("optimizer", engine.step)
    step._negatives = phases.timed("negatives", step._negatives)  # type: ignore[method-assign]
    step._loss = phases.timed("loss", step._loss)  # type: ignore[method-assign]
    step._update_pools = phases.timed(  # type: ignore[method-assign]
        "pool update", step._update_pools)
    # The keys' gather (the forward before it is timed apart, inside _global_keys); the
    # labels' and ids' gathers; the all-reduces by which the ranks agree that a step is
    # finite and whether to stop. (The ids' gather is inside the pool update.)
    dist.all_gather_with_grad = phases.timed("gather", dist.all_gather_with_grad)
    dist.all_gather_no_grad = phases.timed("gather without grad", dist.all_gather_no_grad)
    dist.any_ranks = phases.timed("agreement (finite?, stop?)", dist.any_ranks)
    reporter._send_progress = phases.timed(  # type: ignore[method-assign]
        "progress queue", reporter._send_progress)
    step_done = reporter.step_done

    def timed_step_done(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            step_done(*args, **kwargs)
        finally:
            phases.add("logging", time.perf_counter() - start)
            phases.close_step()

    reporter.step_done = timed_step_done  # type: ignore[method-assign]
    loader = worker._loader
    worker._loader = lambda *a, **k: TimedLoader(loader(*a, **k), phases)  # type: ignore
    worker._save = lambda train: None  # type: ignore[method-assign]
    worker.run(train=None)


def _rank(rank: int, world: int, init_file: str, args: argparse.Namespace, queue: Any) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")})
    try:
        cfg = load_config(args.config, args.overrides)
        threads = cfg.trainer.threads_per_worker
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                      world_size=world)
        phases = Phases()
        if args.kind == "ours":
            _our_loop(cfg, phases)
        else:
            _plain_loop(args.kind, cfg, rank, world, phases)
        summary = phases.summary(args.warmup, cfg.trainer.log_every)
        queue.put((rank, "ok", summary))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``args.kind`` in W processes; rank 0's summary."""
    cfg = load_config(args.config, args.overrides)
    world = cfg.trainer.num_workers
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_rank, args=(r, world, init_file, args, queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        results, errors = {}, []
        for _ in range(world):
            rank, status, payload = queue.get(timeout=args.timeout)
            if status == "ok":
                results[rank] = payload
            else:
                errors.append(f"rank {rank}: {payload}")
        for p in procs:
            p.join(timeout=60)
    if errors:
        raise RuntimeError("\n".join(errors))
    return {"kind": args.kind, "workers": world, **results[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--out", required=True, help="rank 0's summary (JSON)")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the windows")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args(argv)
    summary = run(args)
    Path(args.out).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
