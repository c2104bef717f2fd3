"""Suite ``train``: the whole training step against the loops people write without us.

Measured in one run, in rounds (each round runs every case once, so a busy moment on a shared
machine hits all of them; figures are medians over rounds, ratios are per round):

* ``ray``: ``dist-contrast train`` itself (a subprocess: Ray, 2 workers, DeepSpeed, our step,
  MLflow logging, the progress queue, the stop signal); its step time is read back from the
  run's ``train/samples_per_s`` (windows of ``trainer.log_every`` steps, after the warm-up);
  its start-up phases from the marks of ``dist_contrast.timing``.
* ``ours``: our worker and its loop in 2 gloo processes without Ray, phase by phase
  (``plain_loops.py ours``).
* ``ddp``: a plain PyTorch ``DistributedDataParallel`` loop, same model, loss, batch, negatives
  and threads (``plain_loops.py ddp``).
* ``lightly``: lightly's MoCo (``NTXentLoss`` with a memory bank, ``update_momentum``) in a
  plain DDP loop, against ``ours`` with the same queue (``plain_loops.py lightly``), when an
  interpreter with lightly is found (see ``find_lightly``).
* ``ray`` with 1 worker (full runs only): samples/s against 2 workers.
* The cost of each negative source per step: the real ``TrainStep`` in one process, the four
  configurations in interleaved blocks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import ROOT, Stat, SuiteResult, ratio, run_python  # noqa: E402

PLAIN_LOOPS = ROOT / "benchmarks" / "plain_loops.py"
BATCH_CONFIG = "configs/synthetic.yaml"
QUEUE_CONFIG = "configs/moco.yaml"


class BenchError(RuntimeError):
    """A benchmark case failed; the message is one line."""


@dataclass(frozen=True)
class Plan:
    rounds: int
    steps: int  # per Ray / plain run
    warmup: int  # steps left out (a multiple of log_every)
    queue: int  # the lightly comparison's queue
    one_worker: bool
    source_blocks: int
    source_steps: int
    source_samples: int
    source_batch: int
    source_queue: int


FULL = Plan(rounds=3, steps=80, warmup=20, queue=16_384, one_worker=True, source_blocks=4,
            source_steps=8, source_samples=50_000, source_batch=256, source_queue=65_536)
QUICK = Plan(rounds=1, steps=30, warmup=10, queue=2_048, one_worker=False, source_blocks=1,
             source_steps=3, source_samples=4_000, source_batch=64, source_queue=4_096)

# What the measured runs leave out: nothing in the steps, only end-of-run extras.
RUN_OVERRIDES = ["eval.every_steps=1000000", "checkpoint.every_steps=1000000",
                 "eval.linear_probe=false", "tracking.log_model=false"]


def batch_overrides(plan: Plan, workers: int = 2) -> list[str]:
    return [f"trainer.max_steps={plan.steps}", f"trainer.num_workers={workers}",
            *RUN_OVERRIDES]


def queue_overrides(plan: Plan) -> list[str]:
    """MoCo as lightly's NTXentLoss does it: momentum encoder, the queue as the only negatives
    (no shuffle-BN, which lightly's loop does not do), a queue that fills within the warm-up."""
    return [f"trainer.max_steps={plan.steps}", "trainer.num_workers=2",
            "negatives.sources=[queue]", "negatives.shuffle_bn=false",
            f"negatives.queue.size={plan.queue}", "data.num_samples=20000", *RUN_OVERRIDES]


# ----------------------------------------------------------------------------- the Ray run

#: Start-up phases: (label, from mark, to mark, rank of the marks' process: None = driver).
STARTUP = (
    ("python, imports, config", "spawn", "driver_start"),
    ("preflight (data, resources)", "driver_start", "preflight"),
    ("Ray start (the MLflow experiment checked meanwhile)", "preflight", "ray_init"),
    ("MLflow experiment (what is left of it)", "ray_init", "mlflow_experiment"),
    ("MLflow run", "mlflow_experiment", "mlflow_run"),
    ("worker start (Ray Train)", "mlflow_run", "worker_start"),
    ("data", "worker_start", "data"),
    ("model + DeepSpeed initialize", "data", "deepspeed"),
    ("pools", "deepspeed", "pools"),
    ("tracker + raw-input baseline", "pools", "reporter_start"),
    ("first step", "reporter_start", "first_step"),
)


def ray_run(config: str, overrides: list[str], scratch: Path, name: str) -> dict[str, Any]:
    """``dist-contrast train`` in a subprocess: its window step times and start-up marks."""
    timing = scratch / f"{name}.timing.jsonl"
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}",
               DIST_CONTRAST_TIMING_FILE=str(timing), DS_ACCELERATOR="cpu")
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "dist_contrast.cli", "train", str(ROOT / config),
               *overrides, f"experiment.run_name={name}",
               f"experiment.output_dir={scratch / 'runs'}"]
    spawned = time.time()
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True,
                          check=False)
    ended = time.time()
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"dist-contrast train {config} failed (exit {done.returncode}): {last}")
    found = re.search(r"MLflow run (\w+) in", done.stdout)
    if found is None:
        raise BenchError("dist-contrast train printed no MLflow run id")
    marks: dict[str, float] = {"spawn": spawned, "exit": ended}
    for line in timing.read_text().splitlines():
        mark = json.loads(line)
        if mark["rank"] in (None, 0):  # the driver and rank 0
            marks.setdefault(mark["phase"], mark["time"])
    return {"run_id": found.group(1), "marks": marks,
            "samples_per_s": _samples_per_s(scratch / "mlflow.db", found.group(1))}


def _samples_per_s(db: Path, run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return {m.step: m.value for m in client.get_metric_history(run_id, "train/samples_per_s")}


def window_seconds(run: dict[str, Any], global_batch: int, warmup: int) -> list[float]:
    """Mean step seconds of each logged window whose steps all follow the warm-up."""
    series = run["samples_per_s"]
    steps = sorted(series)
    width = steps[0] if steps else 1
    return [global_batch / series[s] for s in steps if s - width >= warmup]


def startup_phases(marks: dict[str, float]) -> dict[str, float]:
    phases = {label: marks[end] - marks[start] for label, start, end in STARTUP
              if start in marks and end in marks}
    if "first_step" in marks:
        phases["total to first step"] = marks["first_step"] - marks["spawn"]
    if "last_step" in marks:
        phases["after the last step (eval, plots, shutdown)"] = marks["exit"] - marks["last_step"]
    return phases


# ----------------------------------------------------------------------------- plain loops


def plain_run(kind: str, config: str, overrides: list[str], scratch: Path, name: str,
              warmup: int, python: str | None = None) -> dict[str, Any]:
    out = scratch / f"{name}.json"
    extra = []
    if kind == "ours":
        extra = [f"tracking.tracking_uri=sqlite:///{scratch / 'mlflow.db'}",
                 f"experiment.run_name={name}", f"experiment.output_dir={scratch / 'runs'}"]
    done = run_python(python or sys.executable,
                      [str(PLAIN_LOOPS), kind, str(ROOT / config), *overrides, *extra,
                       "--out", str(out), "--warmup", str(warmup)])
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"plain_loops.py {kind} failed (exit {done.returncode}): {last}")
    return dict(json.loads(out.read_text()))


# ----------------------------------------------------------------------------- sources

SOURCES: tuple[tuple[str, str, list[str]], ...] = (
    ("global batch only", "configs/moco_mined.yaml", ["negatives.sources=[batch]"]),
    ("queue", "configs/moco_mined.yaml", ["negatives.sources=[batch,queue]"]),
    ("queue + 64 mined", "configs/moco_mined.yaml", ["negatives.sources=[batch,queue,bank,mined]"]),
    ("bank + NCE", "configs/instdisc.yaml", []),
)


def source_costs(plan: Plan) -> dict[str, list[float]]:
    """Median step seconds of each negative source, block by block (blocks interleaved)."""
    from dist_contrast.config import load_config
    from dist_contrast.data import build_data
    from dist_contrast.models import build_model
    from dist_contrast.train.worker import build_engine, build_step
    from mining import loader_batches, one_process_group

    common = [f"data.num_samples={plan.source_samples}", f"trainer.batch_size={plan.source_batch}",
              f"negatives.queue.size={plan.source_queue}", "negatives.miner.nlist=128",
              "model.embedding_dim=64", "trainer.max_steps=100000"]
    steps: dict[str, Any] = {}
    with one_process_group():
        for label, path, overrides in SOURCES:
            cfg = load_config(ROOT / path, [*common, *overrides])
            torch.manual_seed(0)
            data = build_data(cfg.data, seed=0)
            encoder = build_model(cfg.model, data.input_shape)
            step = build_step(cfg, build_engine(cfg, encoder), data, encoder)
            _fill(step, plan.source_queue, len(data.train))
            batches = loader_batches(cfg, data, plan.source_steps)
            steps[label] = (step, batches, [0])
        times: dict[str, list[float]] = {label: [] for label in steps}
        for block in range(plan.source_blocks + 1):
            for label, (step, batches, count) in steps.items():
                block_times = []
                for batch in batches:
                    start = time.perf_counter()
                    step(batch, count[0])
                    block_times.append(time.perf_counter() - start)
                    count[0] += 1
                if block > 0:  # the first block warms up (the miner builds its index)
                    times[label].append(sorted(block_times)[len(block_times) // 2])
    return times


def _fill(step: Any, queue_size: int, bank_size: int) -> None:
    """Start with a full queue (an empty one makes the loss cheaper) and every bank entry
    written (so the miner's first search indexes all of them), as after the first epoch."""
    pool = step.pool
    if pool is None:
        return
    generator = torch.Generator().manual_seed(1)

    def unit(rows: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(rows, 64, generator=generator), dim=1)

    if pool.queue is not None:
        pool.queue.update(unit(queue_size), torch.arange(queue_size), None, 0)
    if pool.bank is not None:
        pool.bank.update(unit(bank_size), torch.arange(bank_size), None, 0)


# ----------------------------------------------------------------------------- the suite


def run(result: SuiteResult, quick: bool, lightly_python: str | None,
        lightly_reason: str) -> None:
    plan = QUICK if quick else FULL
    scratch = Path(tempfile.mkdtemp(prefix="dist-contrast-bench-"))
    try:
        _run(result, plan, scratch, lightly_python, lightly_reason)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(result: SuiteResult, plan: Plan, scratch: Path, lightly_python: str | None,
         lightly_reason: str) -> None:
    from dist_contrast.config import load_config

    batch_cfg = load_config(ROOT / BATCH_CONFIG, batch_overrides(plan))
    global_batch = batch_cfg.trainer.batch_size * batch_cfg.trainer.num_workers
    seconds: dict[str, list[float]] = {k: [] for k in (
        "ray", "ours", "ddp", "ours_queue", "lightly", "ray_1")}
    phases: dict[str, list[dict[str, float]]] = {"ours": [], "ddp": [], "ours_queue": [],
                                                  "lightly": []}
    startups: list[dict[str, float]] = []
    print(f"train suite: {plan.rounds} round(s) of {plan.steps} steps", flush=True)
    for index in range(plan.rounds):
        print(f"  round {index + 1}: dist-contrast train (Ray, 2 workers)", flush=True)
        ray = ray_run(BATCH_CONFIG, batch_overrides(plan), scratch, f"ray-{index}")
        seconds["ray"].append(_median(window_seconds(ray, global_batch, plan.warmup)))
        startups.append(startup_phases(ray["marks"]))
        for kind in ("ours", "ddp"):
            print(f"  round {index + 1}: {kind} loop (2 gloo processes)", flush=True)
            plain = plain_run(kind, BATCH_CONFIG, batch_overrides(plan), scratch,
                              f"{kind}-{index}", plan.warmup)
            seconds[kind].append(_median(plain["window_step_seconds"]))
            phases[kind].append(plain["phase_seconds"] | {"step": plain["step_seconds"]})
        if lightly_python is not None:
            # Windows only once our queue is full (lightly's bank starts full of random keys).
            fill = -(-plan.queue // global_batch)
            queue_warmup = max(plan.warmup, 10 * (-(-fill // 10)))
            for kind, key in (("ours", "ours_queue"), ("lightly", "lightly")):
                print(f"  round {index + 1}: {kind} loop with a {plan.queue:,}-key queue",
                      flush=True)
                plain = plain_run(kind, QUEUE_CONFIG, queue_overrides(plan), scratch,
                                  f"{key}-{index}", queue_warmup,
                                  python=lightly_python if kind == "lightly" else None)
                seconds[key].append(_median(plain["window_step_seconds"]))
                phases[key].append(plain["phase_seconds"] | {"step": plain["step_seconds"]})
        if plan.one_worker:
            print(f"  round {index + 1}: dist-contrast train (Ray, 1 worker)", flush=True)
            one = ray_run(BATCH_CONFIG, batch_overrides(plan, workers=1), scratch,
                          f"ray1-{index}")
            seconds["ray_1"].append(_median(window_seconds(
                one, batch_cfg.trainer.batch_size, plan.warmup)))
    print("  negative sources (one process, real TrainStep)", flush=True)
    sources = source_costs(plan)
    _tables(result, plan, seconds, phases, startups, sources, global_batch, lightly_reason)


def _median(values: list[float]) -> float:
    if not values:
        raise BenchError("a run logged no window after the warm-up; raise trainer.max_steps")
    return Stat.of(values).median


def _ms(values: list[float]) -> Stat:
    return Stat.of([1000 * v for v in values], "ms")


def _tables(result: SuiteResult, plan: Plan, seconds: dict[str, list[float]],
            phases: dict[str, list[dict[str, float]]], startups: list[dict[str, float]],
            sources: dict[str, list[float]], global_batch: int, lightly_reason: str) -> None:
    rows = result.table(
        "overhead", "One training step (synthetic.yaml: MLP, InfoNCE over the global batch of "
        f"2 × 256, 1 thread per worker): medians over {plan.rounds} round(s)",
        ["loop", "step ms", "vs plain DDP", "target"])
    ddp = seconds["ddp"]
    rows.append({"loop": "plain PyTorch DDP (gloo, 2 processes)", "step ms": _ms(ddp),
                 "vs plain DDP": 1.0, "target": None})
    rows.append({"loop": "our worker without Ray (DeepSpeed + our step + MLflow)",
                 "step ms": _ms(seconds["ours"]), "vs plain DDP": ratio(seconds["ours"], ddp),
                 "target": None})
    rows.append({"loop": "dist-contrast train (Ray, 2 workers)", "step ms": _ms(seconds["ray"]),
                 "vs plain DDP": ratio(seconds["ray"], ddp), "target": "≤ 1.10"})
    result.series["overhead_ratio"] = ratio(seconds["ray"], ddp)

    names = sorted({n for kind in ("ours", "ddp") for p in phases[kind] for n in p} - {"step"})
    rows = result.table(
        "profile", "Where a step's time goes: per-step medians of each phase (ms, median over "
        "rounds); 'other' is the step less its timed phases", ["phase", "ours (no Ray)", "DDP"])
    for name in [*names, "other", "step"]:
        row: dict[str, Any] = {"phase": name}
        for kind, column in (("ours", "ours (no Ray)"), ("ddp", "DDP")):
            values = [p["step"] - sum(v for k, v in p.items() if k != "step")
                      if name == "other" else p.get(name, 0.0) for p in phases[kind]]
            row[column] = _ms(values)
        rows.append(row)
    ray_extra = [r - o for r, o in zip(seconds["ray"], seconds["ours"], strict=True)]
    rows.append({"phase": "Ray's share (Ray run less ours without Ray)",
                 "ours (no Ray)": _ms(ray_extra), "DDP": None})

    rows = result.table(
        "lightly", f"MoCo with a {plan.queue:,}-key queue (momentum encoder, the queue as the "
        "only negatives, 2 gloo processes): our worker against lightly's NTXentLoss with a "
        "memory bank in a plain DDP loop", ["loop", "step ms", "vs lightly"])
    if seconds["lightly"]:
        rows.append({"loop": "lightly NTXentLoss(memory_bank_size) + update_momentum",
                     "step ms": _ms(seconds["lightly"]), "vs lightly": 1.0})
        rows.append({"loop": "our worker (DeepSpeed, tiled info_nce, queue), no Ray",
                     "step ms": _ms(seconds["ours_queue"]),
                     "vs lightly": ratio(seconds["ours_queue"], seconds["lightly"])})
        for kind in ("lightly", "ours_queue"):
            result.series[f"phases_{kind}"] = {
                k: Stat.of([p.get(k, 0.0) * 1000 for p in phases[kind]], "ms")
                for k in sorted({n for p in phases[kind] for n in p})}
    else:
        result.notes.append(f"lightly was not measured: {lightly_reason}")
        rows.append({"loop": f"lightly unavailable: {lightly_reason}", "step ms": None,
                     "vs lightly": None})

    rows = result.table(
        "sources", "Cost of each negative source per step (the real TrainStep, one process, "
        f"{torch.get_num_threads()} threads, batch {plan.source_batch}, "
        f"moco_mined.yaml's MLP; queue {plan.source_queue:,}; bank of "
        f"{int(plan.source_samples * 0.8):,}): medians of blocks of {plan.source_steps} steps",
        ["negatives", "step ms", "vs global batch only"])
    base = sources["global batch only"]
    for label, values in sources.items():
        rows.append({"negatives": label, "step ms": _ms(values),
                     "vs global batch only": ratio(values, base)})

    rows = result.table(
        "scaling", "Throughput of dist-contrast train (synthetic.yaml, 256 samples per worker "
        "per step)", ["workers", "samples/s", "ideal (linear from 1 worker)"])
    one = [global_batch / 2 / s for s in seconds["ray_1"]]
    two = [global_batch / s for s in seconds["ray"]]
    rows.append({"workers": 1, "samples/s": Stat.of(one, "samples/s") if one else None,
                 "ideal (linear from 1 worker)": Stat.of(one) if one else None})
    rows.append({"workers": 2, "samples/s": Stat.of(two, "samples/s"),
                 "ideal (linear from 1 worker)": Stat.of([2 * v for v in one]) if one else None})
    if not one:
        result.notes.append("the 1-worker run is left out with --quick")
    result.series["scaling"] = {"workers": [1, 2], "one": one, "two": two}

    rows = result.table(
        "startup", "From `dist-contrast train` to the first training step (synthetic.yaml, "
        "2 workers, warm caches and MLflow store; the 2-worker Ray run of each round is a repeat)",
        ["phase", "seconds"])
    labels = [label for label, _, _ in STARTUP] + [
        "total to first step", "after the last step (eval, plots, shutdown)"]
    for label in labels:
        values = [s[label] for s in startups if label in s]
        rows.append({"phase": label, "seconds": Stat.of(values, "s") if values else None})
    result.series["startup"] = {label: [s.get(label) for s in startups] for label in labels}
