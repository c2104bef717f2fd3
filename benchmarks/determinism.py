"""What ``trainer.deterministic=true`` costs: the real training step with and without
``torch.use_deterministic_algorithms``, side by side in one process (not a timed test).

For each config, the trainer's own step (``TrainStep`` built by ``build_engine``/``build_step``,
DeepSpeed on CPU, one process) runs blocks of steps alternately in the two modes, so a busy
moment on a shared machine hits both; the table gives each mode's median step and their ratio.

Run ``python benchmarks/determinism.py`` (or ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dist_contrast.config import load_config  # noqa: E402
from dist_contrast.data import build_data  # noqa: E402
from dist_contrast.models import build_model  # noqa: E402
from dist_contrast.train.worker import build_engine, build_step  # noqa: E402
from mining import loader_batches, one_process_group  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "synthetic.yaml (in-batch InfoNCE, MLP)": ["configs/synthetic.yaml"],
    "moco.yaml (queue 65,536, shuffle-BN, BatchNorm)": ["configs/moco.yaml",
                                                        "data.num_samples=20000"],
    "digits.yaml (CNN)": ["configs/digits.yaml"],
}


def time_modes(path: str, overrides: list[str], blocks: int, steps: int) -> dict[bool, float]:
    """Median seconds of one real step with deterministic algorithms off and on."""
    cfg = load_config(ROOT / path, overrides)
    torch.manual_seed(cfg.experiment.seed)
    data = build_data(cfg.data, seed=cfg.experiment.seed)
    encoder = build_model(cfg.model, data.input_shape)
    step = build_step(cfg, build_engine(cfg, encoder), data, encoder)
    batches = loader_batches(cfg, data, steps)
    times: dict[bool, list[float]] = {False: [], True: []}
    count = 0
    for block in range(2 * blocks + 1):
        deterministic = block % 2 == 1
        torch.use_deterministic_algorithms(deterministic)
        for batch in batches:
            start = time.perf_counter()
            step(batch, count)
            if block > 0:  # the first block warms up
                times[deterministic].append(time.perf_counter() - start)
            count += 1
    torch.use_deterministic_algorithms(False)
    return {mode: sorted(values)[len(values) // 2] for mode, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blocks, steps = (1, 3) if args.quick else (5, 10)
    configs = dict(list(CONFIGS.items())[:1]) if args.quick else CONFIGS
    print(f"# determinism benchmark, {args.threads} thread(s), {blocks} × {steps} steps a mode")
    print("| config | step, default | step, deterministic | ratio |\n|---|---|---|---|")
    with one_process_group():
        for name, (path, *overrides) in configs.items():
            if args.quick:
                overrides = [*overrides, "trainer.batch_size=32"]
            medians = time_modes(path, overrides, blocks, steps)
            print(f"| {name} | {1000 * medians[False]:.1f} ms | {1000 * medians[True]:.1f} ms | "
                  f"{medians[True] / medians[False]:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
