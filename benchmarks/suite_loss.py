"""Suite ``loss``: InfoNCE over a large pool of negatives (``loss.py``'s cases), against N.

For each pool size N (B and D fixed) and each case (bare products, tiled, untiled,
pytorch-metric-learning's and lightly's ``NTXentLoss``), one process per case and round
(``loss.py --worker``: the peak memory is that process's), rounds interleaved. Also this
machine's matmul throughput (a square float32 GEMM, or bf16 on a GPU), and the tiled loss's
fraction of it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loss as loss_script  # noqa: E402
from results import Stat, SuiteResult, ratio  # noqa: E402

CASES = ("bare", "tiled", "untiled", "pml", "lightly")
LABELS = {
    "bare": "bare q @ tileᵀ + P @ tile (the machine's limit)",
    "tiled": "tiled info_nce (ours)",
    "untiled": "untiled info_nce",
    "pml": "pytorch-metric-learning NTXentLoss",
    "lightly": "lightly NTXentLoss + memory bank",
}


@dataclass(frozen=True)
class Plan:
    batch: int
    pools: tuple[int, ...]
    tile: int
    rounds: int
    repeats: int
    gemm: int
    memory_limit: int  # cases estimated to need more are skipped


FULL = Plan(batch=2048, pools=(16_384, 65_536, 262_144, 1_048_576), tile=1024, rounds=2,
            repeats=1, gemm=2048, memory_limit=loss_script.MEMORY_LIMIT)
QUICK = Plan(batch=128, pools=(1_024, 4_096), tile=512, rounds=1, repeats=1, gemm=512,
             memory_limit=2**30)


def matmul_flops(size: int, repeats: int = 5) -> list[float]:
    """FLOP/s of ``size``³ GEMMs (float32 on CPU, bfloat16 on a GPU), one value per repeat."""
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    values = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        values.append(2 * size**3 / (time.perf_counter() - start))
    return values


def loss_flops(batch: int, pool: int) -> float:
    """The products a pool loss cannot avoid: q @ poolᵀ and P @ pool, 2·B·N·D each."""
    return 4.0 * batch * pool * loss_script.DIM


def run(result: SuiteResult, quick: bool, lightly_python: str | None,
        lightly_reason: str) -> None:
    plan = QUICK if quick else FULL
    threads = torch.get_num_threads()
    cases = [c for c in CASES if c != "lightly" or lightly_python is not None]
    if lightly_python is None:
        result.notes.append(f"lightly's NTXentLoss was not measured: {lightly_reason}")
    measured: dict[tuple[int, str], list[dict[str, Any]]] = {}
    skipped: dict[tuple[int, str], float] = {}
    gemm: list[float] = []
    print(f"loss suite: B={plan.batch}, N in {list(plan.pools)}, {plan.rounds} round(s)",
          flush=True)
    for index in range(plan.rounds):
        gemm += matmul_flops(plan.gemm)
        for pool in plan.pools:
            print(f"  round {index + 1}, N={pool:,}", flush=True)
            for case in cases:
                need = loss_script._estimated_bytes(case, plan.batch, pool)
                if need > plan.memory_limit:
                    skipped[(pool, case)] = need
                    continue
                python = lightly_python if case == "lightly" else None
                if quick and python is None:  # a smoke run: in this process, peaks indicative
                    found = loss_script._run_case(case, plan.batch, pool, plan.tile,
                                                  plan.repeats)
                else:
                    found = loss_script._in_subprocess(case, plan.batch, pool, plan.tile,
                                                       plan.repeats, threads, python)
                if "error" in found:
                    raise RuntimeError(f"loss case {case} at N={pool} failed: {found['error']}")
                measured.setdefault((pool, case), []).append(found)
    peak = Stat.of(gemm, "FLOP/s")
    result.series["matmul_flops"] = peak
    result.series["batch"] = plan.batch
    result.series["tile"] = plan.tile
    rows = result.table(
        "loss", f"InfoNCE over a pool without gradient (MoCo's case), B = {plan.batch:,}, "
        f"D = {loss_script.DIM}, float32, tile {plan.tile}, {threads} threads; one process per "
        f"case, min of {plan.repeats} per process, median over {plan.rounds} round(s)",
        ["N", "case", "fwd+bwd s", "peak MiB", "time / bare", "untiled peak / peak",
         "share of matmul peak"])
    curves: dict[str, dict[str, list[Any]]] = {}
    for pool in plan.pools:
        bare = [r["seconds"] for r in measured.get((pool, "bare"), [])]
        untiled = measured.get((pool, "untiled"), [])
        for case in cases:
            if (pool, case) in skipped:
                rows.append({"N": pool, "case": LABELS[case],
                             "fwd+bwd s": f"skipped: needs ~{skipped[(pool, case)] / 2**30:,.1f} "
                                          "GiB", "peak MiB": None, "time / bare": None,
                             "untiled peak / peak": None, "share of matmul peak": None})
                continue
            runs = measured[(pool, case)]
            seconds = [r["seconds"] for r in runs]
            peaks = [r["peak_bytes"] / 2**20 for r in runs]
            row: dict[str, Any] = {
                "N": pool, "case": LABELS[case], "fwd+bwd s": Stat.of(seconds, "s"),
                "peak MiB": Stat.of(peaks, "MiB"),
                "time / bare": ratio(seconds, bare) if bare else None,
                "untiled peak / peak": None, "share of matmul peak": None,
            }
            if untiled and min(peaks) > 0:
                row["untiled peak / peak"] = Stat.of(
                    [u["peak_bytes"] / 2**20 / p for u, p in zip(untiled, peaks, strict=True)])
            if case in ("tiled", "bare"):
                row["share of matmul peak"] = Stat.of(
                    [loss_flops(plan.batch, pool) / s / peak.median for s in seconds])
            rows.append(row)
            curve = curves.setdefault(case, {"N": [], "seconds": [], "peak_mib": []})
            curve["N"].append(pool)
            curve["seconds"].append(Stat.of(seconds).median)
            curve["peak_mib"].append(Stat.of(peaks).median)
    result.series["curves"] = curves
    result.series["labels"] = {c: LABELS[c] for c in cases}
    gemm_rows = result.table(
        "matmul", "This machine's matmul throughput (the reference of the share column)",
        ["GEMM", "GFLOP/s"])
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    gemm_rows.append({"GEMM": f"{plan.gemm}³ {dtype}, {threads} threads",
                      "GFLOP/s": Stat.of([g / 1e9 for g in gemm], "GFLOP/s")})
