"""Forward+backward time and peak memory of InfoNCE over a large pool of negatives.

Compares, in one run and on one machine:

- ``tiled``: ``info_nce(..., tile_size=T)``, streaming log-sum-exp with the query's gradient
  accumulated in the same pass;
- ``untiled``: ``info_nce`` holding all B × N logits;
- ``pml``: pytorch-metric-learning's ``NTXentLoss`` with the pool as reference embeddings (only
  where its pair lists fit);
- ``lightly``: lightly's ``NTXentLoss`` with a memory bank holding the pool (MoCo as lightly
  users write it; only where its B × N logits fit, and only with an interpreter that has
  lightly: ``--lightly-python``);
- ``bare``: the two matrix products no exact loss over a pool without gradient can avoid,
  ``q @ poolᵀ`` and ``P @ pool``, tile by tile with the same tiles: the machine's limit.

The case is MoCo's: queries with gradient, one positive key each (``in_batch=False``) and a pool
of N negatives that needs no gradient (a queue). D = 128; float32 on CPU, bfloat16 on a GPU.

Peak memory: each case runs in its own subprocess. On CPU the figure is the rise of the
process's peak resident set size (``ru_maxrss``) from just before the first forward (inputs
already allocated, torch warmed on a tiny problem) to the end of forward+backward: everything
torch allocated for the loss, whatever allocator it went through. On a GPU it is
``torch.cuda.max_memory_allocated`` above the inputs.

    python benchmarks/loss.py                       # the target point B=2048, N=262144
    python benchmarks/loss.py --batch 512 8192 --pool 65536 1048576
    python benchmarks/loss.py --quick               # a small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dist_contrast.losses import info_nce  # noqa: E402

DIM = 128
MEMORY_LIMIT = 16 * 2**30  # skip untiled / PML configurations estimated to need more


def _inputs(batch: int, pool: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator(device="cpu").manual_seed(0)

    def unit(rows: int) -> torch.Tensor:
        x = torch.randn(rows, DIM, generator=gen)
        return torch.nn.functional.normalize(x, dim=1).to(device=device, dtype=dtype)

    return unit(batch).requires_grad_(), unit(batch), unit(pool)


def _bare_products(query: torch.Tensor, pool: torch.Tensor, tile: int) -> None:
    """``q @ tileᵀ`` then ``P @ tile`` per tile, float32 accumulation as in the loss."""
    q = query.detach().float()
    out = torch.zeros_like(q)
    for start in range(0, pool.shape[0], tile):
        block = pool[start:start + tile].float()
        logits = q @ block.T
        out.addmm_(logits, block)


def _run_case(case: str, batch: int, pool_size: int, tile: int, repeats: int) -> dict:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    # Warm up torch's kernels and thread pool on a tiny problem so the peak measured below is
    # the loss's, not the library's first-use allocations.
    warm_q, warm_k, warm_pool = _inputs(8, 64, device, dtype)
    info_nce(warm_q, warm_k, warm_pool, temperature=0.07, in_batch=False, tile_size=16).backward()
    query, key, pool = _inputs(batch, pool_size, device, dtype)
    if case == "lightly":
        from lightly.loss import NTXentLoss

        criterion = NTXentLoss(temperature=0.07, memory_bank_size=(pool_size, DIM)).to(device)
        criterion.memory_bank.bank = pool.float().clone()  # [N, D]: the same pool as ours

    def step() -> None:
        query.grad = None
        if case == "tiled":
            info_nce(query, key, pool, temperature=0.07, in_batch=False, tile_size=tile).backward()
        elif case == "untiled":
            info_nce(query, key, pool, temperature=0.07, in_batch=False).backward()
        elif case == "lightly":
            criterion(query, key).backward()
        elif case == "pml":
            from pytorch_metric_learning.losses import NTXentLoss

            labels = torch.arange(batch, device=device)
            ref_labels = torch.cat([labels, torch.arange(batch, batch + pool_size, device=device)])
            NTXentLoss(temperature=0.07)(query, labels, ref_emb=torch.cat([key, pool]),
                                         ref_labels=ref_labels).backward()
        else:
            with torch.no_grad():
                _bare_products(query, pool, tile)
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if cuda else _peak_rss()) - base
    return {"case": case, "seconds": min(times), "times": times, "peak_bytes": max(peak, 0)}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that RSS.

    Writing 5 to /proc/self/clear_refs resets the mark (Linux ≥ 4.0); where it is not
    available, fall back to the peak so far (the figure is then a lower bound).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _estimated_bytes(case: str, batch: int, pool: int) -> int:
    """Rough peak of the cases that hold B × N things: ~5 float32 copies of the logits for the
    untiled loss (and lightly's); PML's NT-Xent builds [positive pairs × negative pairs]
    float matrices, ~16·B·B·(N + B) bytes (9.1 GiB measured at B = 256, N = 8,192)."""
    if case in ("untiled", "lightly"):
        return 5 * 4 * batch * (pool + 1)
    if case == "pml":
        return 16 * batch * batch * (pool + batch)
    return 0


def _in_subprocess(case: str, batch: int, pool: int, tile: int, repeats: int,
                   threads: int, python: str | None = None) -> dict:
    command = [python or sys.executable, __file__, "--worker", case, "--batch", str(batch),
               "--pool", str(pool), "--tile-size", str(tile), "--repeats", str(repeats),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"case": case, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _describe_machine(threads: int) -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}, bfloat16 inputs (float32 logits)"
    return (f"CPU {_cpu_model()}, {os.cpu_count()} logical cores, torch threads = {threads}, "
            f"float32, torch {torch.__version__}")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[2048])
    parser.add_argument("--pool", type=int, nargs="+", default=[262_144])
    # 1024: on 2 CPU cores the per-tile overhead is amortised and a [B, T] tile still fits L3.
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the minimum is kept")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--lightly-python", metavar="PYTHON",
                        help="an interpreter with lightly: adds lightly's NTXentLoss")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(_run_case(args.worker, args.batch[0], args.pool[0], args.tile_size,
                                   args.repeats)))
        return
    if args.quick:
        args.batch, args.pool, args.tile_size, args.repeats = [64], [2048], 512, 1

    print(f"# InfoNCE over a pool without gradient, D={DIM}, tile_size={args.tile_size}")
    print(f"# {_describe_machine(args.threads)}")
    print("# peak = rise of the process's peak RSS (VmHWM, reset just before the first forward; "
          "CPU) or of max_memory_allocated (GPU) during fwd+bwd; each case in its own process")
    print()
    header = ("| B | N | case | fwd+bwd s | peak MiB | time / tiled | time / bare "
              "| peak untiled / peak |")
    print(header)
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batch:
        for pool in args.pool:
            results = {}
            cases = ["bare", "tiled", "untiled", "pml"]
            if args.lightly_python:
                cases.append("lightly")
            for case in cases:
                if _estimated_bytes(case, batch, pool) > MEMORY_LIMIT:
                    results[case] = {"case": case, "skipped": True}
                    continue
                python = args.lightly_python if case == "lightly" else None
                if args.quick and python is None:  # a smoke run: one process, the peaks
                    # are only indicative
                    results[case] = _run_case(case, batch, pool, args.tile_size, args.repeats)
                else:
                    results[case] = _in_subprocess(case, batch, pool, args.tile_size,
                                                   args.repeats, args.threads, python)
            _print_rows(batch, pool, results)


def _print_rows(batch: int, pool: int, results: dict[str, dict]) -> None:
    tiled, bare, untiled = results["tiled"], results["bare"], results["untiled"]
    for case, r in results.items():
        if r.get("skipped"):
            estimate = _estimated_bytes(case, batch, pool) / 2**30
            print(f"| {batch} | {pool} | {case} | skipped: needs ~{estimate:,.0f} GiB "
                  "| | | | |")
            continue
        if "error" in r:
            print(f"| {batch} | {pool} | {case} | failed: {r['error']} | | | | |")
            continue
        vs_tiled = r["seconds"] / tiled["seconds"] if "seconds" in tiled else float("nan")
        vs_bare = r["seconds"] / bare["seconds"] if "seconds" in bare else float("nan")
        mem_ratio = (untiled["peak_bytes"] / r["peak_bytes"]
                     if "peak_bytes" in untiled and r["peak_bytes"] else float("nan"))
        print(f"| {batch} | {pool} | {case} | {r['seconds']:.3f} | {_mib(r['peak_bytes'])} | "
              f"{vs_tiled:.2f} | {vs_bare:.2f} | {mem_ratio:,.0f} |")


if __name__ == "__main__":
    main()
