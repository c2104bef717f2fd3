"""GradCache against the plain step: peak memory and samples per second against the batch size,
for the small transformer of configs/codesearch_transformer.yaml (2 layers, 128 wide, queries
of 48 tokens and documents of 128), one worker, DeepSpeed on CPU.

    python benchmarks/grad_cache.py [--budget-mib 1024] [--chunk 64] [--steps 3] [--out DIR]

The plain step's batch doubles from 32 until its step needs more than ``--budget-mib`` of
tensors (the "largest batch that fits"); GradCache then runs at
1×, 2×, 4× and 8× that batch, and beside the plain step at every batch the plain step fits.
Every point is a fresh process. Its step memory is the peak of live tensor bytes during one
step, from torch.profiler's memory events (what ``torch.cuda.max_memory_allocated`` reports on
a GPU: steady from run to run); the peak resident set above the set-up's (the kernel's
high-water mark) is measured beside it, though the C allocator makes it noisy. Its time is
the median step of ``--steps`` after one warm-up step, without the profiler. It prints the
table and the two ratios of the targets (memory flat within 10% from 1× to 8×; time at most
1.3× the plain step's at the largest batch that fits), and writes ``grad_cache.json`` and
``grad_cache.png`` into ``--out`` (default benchmarks/results/grad_cache).

Not a timed test: run it on a quiet machine (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "codesearch_transformer.yaml"
WORDS = [f"{stem}{i}" for i in range(600) for stem in ("get", "value", "node", "path")]


def write_pairs(path: Path, rows: int) -> None:
    """``rows`` (query, document) pairs of made-up identifiers: queries of 12 words, documents
    of 160 (longer than the 128 tokens a document keeps, so every row is full length)."""
    rng = random.Random(0)
    with path.open("w") as out:
        for _ in range(rows):
            query = rng.sample(WORDS, 12)
            document = query + rng.choices(WORDS, k=148)
            rng.shuffle(document)
            out.write(json.dumps({"anchor": " ".join(query),
                                  "positive": " ".join(document)}) + "\n")


def _memory(field: str) -> int:
    """A field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(pairs: str, batch: int, chunk: int | None, steps: int) -> dict[str, float]:
    """One point, in this process: the step's memory above the set-up's and its median time."""
    import torch
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["LOCAL_RANK"] = "0"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as rendezvous:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}/init", rank=0,
                                world_size=1)
        from dist_contrast.config import load_config
        from dist_contrast.data import build_data
        from dist_contrast.models import build_model
        from dist_contrast.models.build import fit_featurizer
        from dist_contrast.train.worker import build_engine, build_step

        cache = [f"trainer.grad_cache={{chunk_size: {chunk}}}"] if chunk else []
        cfg = load_config(CONFIG, [
            f"data.path={pairs}", "data.eval_path=null", "data.params={}", "data.num_test=16",
            "model.vocab_size=2000", "trainer.num_workers=1", f"trainer.batch_size={batch}",
            f"trainer.max_steps={steps + 10}", "loss.tile_size=256", *cache,
        ])
        torch.manual_seed(0)
        data = build_data(cfg.data, seed=0)
        encoder = build_model(cfg.model, data.input_shape)
        pairs_data: Any = data.train  # text pairs: texts() and collate()
        fit_featurizer(encoder, cfg.model, pairs_data.texts())
        engine = build_engine(cfg, encoder)
        step = build_step(cfg, engine, data, encoder)
        batches = [pairs_data.collate(pairs_data.__getitems__(
            list(range(i * batch, (i + 1) * batch)))) for i in range(2)]
        step(batches[0], 0)  # warm-up: allocator pools, DeepSpeed's first step
        before = _memory("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
        times = []
        for index in range(steps):
            started = time.perf_counter()
            step(batches[index % 2], index + 1)
            times.append(time.perf_counter() - started)
        peak = _memory("VmHWM")
        tensors = peak_tensor_bytes(lambda: step(batches[steps % 2], steps + 1))
        dist.destroy_process_group()
    seconds = statistics.median(times)
    return {"batch": batch, "chunk": chunk or 0, "step_mib": tensors / 2**20,
            "rss_mib": (peak - before) / 2**20, "seconds": seconds,
            "samples_per_s": batch / seconds}


def peak_tensor_bytes(run: Callable[[], object]) -> int:
    """The peak, during ``run()``, of the bytes of the tensors allocated in it and still alive.

    From torch.profiler's memory events: each carries the allocator's running total of the
    bytes allocated since profiling began. Tensors made before and freed during ``run()`` are
    not subtracted, so this bounds the live bytes above the start from above."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    with tempfile.TemporaryDirectory() as scratch:
        trace = Path(scratch) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return max((int(e["args"]["Total Allocated"]) for e in events
                if e.get("name") == "[memory]"), default=0)


def point(pairs: Path, batch: int, chunk: int | None, steps: int) -> dict[str, float]:
    """``measure`` in a fresh process (a clean high-water mark)."""
    done = subprocess.run(
        [sys.executable, __file__, "--point", str(pairs), str(batch), str(chunk or 0),
         str(steps)], capture_output=True, text=True, check=False,
        env=dict(os.environ, DS_ACCELERATOR="cpu"))
    if done.returncode != 0:
        raise SystemExit(f"the point batch={batch} chunk={chunk} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    mode = f"GradCache (chunk {chunk})" if chunk else "plain"
    print(f"  {mode:>20} B={batch:>5}: {result['step_mib']:7.1f} MiB of tensors "
          f"({result['rss_mib']:5.0f} MiB resident), {result['samples_per_s']:7.1f} samples/s",
          flush=True)
    return result


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    for label, chunked in (("plain step", False), ("GradCache", True)):
        mine = [r for r in rows if bool(r["chunk"]) == chunked]
        memory.plot([r["batch"] for r in mine], [r["step_mib"] for r in mine], "o-",
                    label=label)
        speed.plot([r["batch"] for r in mine], [r["samples_per_s"] for r in mine], "o-",
                   label=label)
    for axis, title in ((memory, "peak live tensor bytes in a step (MiB)"),
                        (speed, "samples per second")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch (one worker)")
        axis.set_title(title)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-mib", type=float, default=1024.0,
                        help="the MiB of tensors a step may use to fit (default 1024)")
    parser.add_argument("--chunk", type=int, default=64, help="GradCache's chunk size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per point")
    parser.add_argument("--max-batch", type=int, default=1024,
                        help="the plain step's largest batch tried (default 1024)")
    parser.add_argument("--multiples", default="2,4,8",
                        help="GradCache's batches beyond the largest that fits, as multiples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grad_cache")
    parser.add_argument("--point", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        pairs, batch, chunk, steps = args.point
        print(json.dumps(measure(pairs, int(batch), int(chunk) or None, int(steps))))
        return 0
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        pairs = Path(scratch) / "pairs.jsonl"
        write_pairs(pairs, 2 * 8 * args.max_batch + 32)
        print("the plain step, doubling the batch until it needs more than "
              f"{args.budget_mib:.0f} MiB:", flush=True)
        fits, batch = 0, 32
        while batch <= args.max_batch:
            plain = point(pairs, batch, None, args.steps)
            if plain["step_mib"] > args.budget_mib:
                break
            rows.append(plain)
            fits, batch = batch, batch * 2
        if not fits:
            raise SystemExit(f"no batch fits in {args.budget_mib:.0f} MiB; raise --budget-mib")
        multiples = [int(k) for k in args.multiples.split(",")]
        print(f"GradCache at 1× and {', '.join(f'{k}×' for k in multiples)} the largest batch "
              f"that fits ({fits}), and at the smaller ones:", flush=True)
        batches = sorted({r["batch"] for r in rows} | {fits * k for k in multiples})
        rows += [point(pairs, b, args.chunk, args.steps) for b in batches]
    cached = {r["batch"]: r for r in rows if r["chunk"]}
    plain_rows = {r["batch"]: r for r in rows if not r["chunk"]}
    top = max(multiples)
    flat = cached[top * fits]["step_mib"] / cached[fits]["step_mib"]
    slower = cached[fits]["seconds"] / plain_rows[fits]["seconds"]
    print("\n| batch | plain: tensor MiB | resident MiB | samples/s "
          "| GradCache: tensor MiB | resident MiB | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for b in batches:
        p = plain_rows.get(b)
        c = cached[b]
        plain_cells = (f"{p['step_mib']:.1f} | {p['rss_mib']:.0f} | {p['samples_per_s']:.1f}"
                       if p else "does not fit | | –")
        print(f"| {b} | {plain_cells} | {c['step_mib']:.1f} | {c['rss_mib']:.0f} "
              f"| {c['samples_per_s']:.1f} |")
    print(f"\nGradCache's step memory at {top}× over 1× the largest batch that fits ({fits}): "
          f"{flat:.2f}  (target ≤ 1.10)")
    print(f"GradCache's step time over the plain step's at batch {fits}: {slower:.2f}  "
          "(target ≤ 1.30)")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"budget_mib": args.budget_mib, "chunk": args.chunk, "largest_plain": fits,
               "largest_multiple": top, "memory_top_over_1x": flat, "time_over_plain": slower,
               "points": rows,
               "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    (args.out / "grad_cache.json").write_text(json.dumps(summary, indent=1) + "\n")
    figure(rows, args.out / "grad_cache.png")
    print(f"wrote {args.out / 'grad_cache.json'} and grad_cache.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
