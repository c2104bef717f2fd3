"""The miner's share of training time in a real MoCo + mined run (target 2 of the mining issue).

Runs ``dist-contrast train configs/moco_mined.yaml`` at scale (by default a 1,000,000-key bank,
D = 128, 2 Ray workers, 1,100 steps) in a scratch directory, then reads the run back from its
MLflow store. Each worker's trainer logs ``miner/time_share`` every ``trainer.log_every``
steps: the miner's seconds (search, selection, incremental refresh, rebuilds) over the rank's
wall time in that window, both measured in the same process. This script weights the windows
by their wall time (from ``train/samples_per_s``) and prints the share over the whole run and
after the warm-up, with the per-window search time, rebuild count and list imbalance.

Not a timed test: run it on a quiet machine (``python benchmarks/miner_share.py``, ~15 min;
``--steps 200 --keys 100000`` for a smoke run). Extra ``key=value`` arguments override the
config, e.g. ``negatives.miner.adaptive_rebuild=false`` for the fixed schedule. ``--db PATH``
only re-reads an earlier run's ``mlflow.db``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "moco_mined.yaml"
METRICS = (
    "miner/time_share", "train/samples_per_s", "miner/search_seconds", "miner/rebuilds",
    "miner/imbalance", "miner/negative_similarity",
)


def overrides(keys: int, steps: int, log_every: int) -> list[str]:
    """The scaled-up run: ``keys`` bank entries (the training split), D = 128."""
    large = keys >= 500_000
    return [
        f"data.num_samples={keys + keys // 4}",
        f"data.num_test={keys // 4}",
        "model.embedding_dim=128",
        f"negatives.miner.nlist={4096 if large else 1024}",
        # Each worker indexes half the bank: half the refresh and rebuild work per worker.
        f"negatives.miner.layout={'sharded' if large else 'replicated'}",
        f"trainer.max_steps={steps}",
        f"trainer.log_every={log_every}",
        "eval.every_steps=1000000",
        "checkpoint.every_steps=1000000",
    ]


def train(workdir: Path, args: list[str]) -> Path:
    """Run the training CLI in ``workdir``; its MLflow store is ``workdir/mlflow.db``."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}")
    env.setdefault("DS_ACCELERATOR", "cpu")
    command = [sys.executable, "-m", "dist_contrast.cli", "train", str(CONFIG), *args]
    print("$ dist-contrast", " ".join(command[3:]), flush=True)
    result = subprocess.run(command, cwd=workdir, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"training failed (exit {result.returncode}); see its output above")
    return workdir / "mlflow.db"


def read_run(db: Path) -> dict[str, dict[int, float]]:
    """The newest run's metric histories, {name: {step: value}}."""
    if not db.is_file():
        raise SystemExit(f"no MLflow store at {db}; pass the mlflow.db of a finished run")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"{db} holds no runs")
    run_id = runs[0].info.run_id
    return {
        name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
        for name in METRICS
    }


def share(history: dict[str, dict[int, float]], batch: int, first: int, last: int) -> float:
    """The miner's share of wall time over the log windows ending in steps [first, last].

    Each window's share is weighted by its seconds, window_steps · batch / samples_per_s.
    """
    shares, rates = history["miner/time_share"], history["train/samples_per_s"]
    steps = sorted(s for s in shares if s in rates)
    miner = wall = 0.0
    previous = 0
    for step in steps:
        seconds = (step - previous) * batch / rates[step]
        previous = step
        if first <= step <= last:
            miner += shares[step] * seconds
            wall += seconds
    return miner / wall if wall else float("nan")


def report(history: dict[str, dict[int, float]], batch: int, warmup: int) -> None:
    steps = sorted(history["miner/time_share"])
    if not steps:
        raise SystemExit("the run logged no miner/time_share: was 'mined' in negatives.sources?")
    print("\n| step | samples/s | miner share | search ms | rebuilds | imbalance | mined sim |")
    print("|---|---|---|---|---|---|---|")
    for step in steps:
        row = [history[name].get(step, float("nan")) for name in METRICS]
        print(f"| {step} | {row[1]:,.0f} | {100 * row[0]:.1f}% | {1000 * row[2]:.1f} | "
              f"{row[3]:.0f} | {row[4]:.1f} | {row[5]:.3f} |")
    last = steps[-1]
    print(f"\nminer share of training time, all {last} steps: "
          f"{100 * share(history, batch, 0, last):.1f}%")
    print(f"miner share of training time, steps {warmup + 1}-{last}: "
          f"{100 * share(history, batch, warmup + 1, last):.1f}%  (target < 10%)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="bank size (training rows)")
    parser.add_argument("--steps", type=int, default=1100)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=150,
                        help="steps left out of the second share (the queue filling)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the run writes (default: a new temporary directory)")
    parser.add_argument("--db", type=Path, default=None,
                        help="only read this finished run's mlflow.db")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, key=value")
    args = parser.parse_args(argv)
    # The global batch: the windows' seconds come from samples/s.
    from dist_contrast.config import load_config

    extra = overrides(args.keys, args.steps, args.log_every) + args.overrides
    cfg = load_config(CONFIG, extra)
    batch = cfg.trainer.batch_size * cfg.trainer.num_workers
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)")
    if args.db is not None:
        db = args.db
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="miner_share_"))
        db = train(workdir, extra)
    report(read_run(db), batch, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
