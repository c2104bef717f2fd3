"""Benchmark of the hard-negative miner and the sharded queue (not a timed test).

Measures, on a synthetic bank with overlapping clusters of spread sizes and variances
(``dist_contrast.negatives.synthetic.clustered_keys``):

* queries/s and recall@k of each FAISS index type against exact ``torch.topk`` over the same
  bank (the bank's keys are L2-normalised; the score is the inner product);
* the miner's per-step cost (search + filter/rerank of one batch, incremental refresh of the
  batch's changed entries, a full rebuild amortised over ``rebuild_every`` steps) as a
  fraction of a representative training step timed in the same run: an MLP encoder
  (512→1024→BN→ReLU→128) forward + backward on a batch of 256 with a momentum key
  encoder and ``info_nce`` over a 65,536-key queue, SGD step, momentum and queue update;
* the peak resident memory per worker of the queue + loss, replicated vs sharded, with
  2 gloo processes.

Run ``python benchmarks/mining.py`` (full; the 1,000,000-key bank takes minutes) or
``--quick`` for a small smoke run. Results are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dist_contrast import dist  # noqa: E402
from dist_contrast.losses import info_nce  # noqa: E402
from dist_contrast.negatives import (  # noqa: E402
    FaissMiner,
    KeyQueue,
    MemoryBank,
    MinerConfig,
    MomentumEncoder,
)
from dist_contrast.negatives.collective import sharded_pool_lse  # noqa: E402
from dist_contrast.negatives.synthetic import clustered_keys  # noqa: E402


@dataclass
class Setup:
    sizes: list[int]
    queries: int
    k: int
    dim: int
    batch: int
    queue: int
    memory_queue: int
    train_steps: int


FULL = Setup([100_000, 1_000_000], 4096, 64, 128, 256, 65_536, 262_144, 10)
QUICK = Setup([4_000], 128, 16, 32, 32, 2048, 8192, 2)


def index_configs(size: int, k: int) -> list[tuple[str, MinerConfig, str, list[int]]]:
    """Index settings compared: (name, config, search knob, knob values). nlist ~ 2·√n."""
    nlist = 1 << max(4, round(2 * size**0.5).bit_length() - 1)
    common: dict[str, Any] = {"num_negatives": k, "extra": 0, "rerank": False}
    return [
        ("exact (IndexFlatIP)", MinerConfig(index="exact", **common), "", [0]),
        (f"ivf_flat nlist={nlist}", MinerConfig(index="ivf_flat", nlist=nlist, **common),
         "nprobe", [16, 48, 96]),
        ("hnsw M=32", MinerConfig(index="hnsw", hnsw_m=32, **common), "efSearch", [128, 256]),
        (f"ivf_pq nlist={nlist} m=16 + exact rerank of 4k", MinerConfig(
            index="ivf_pq", nlist=nlist, pq_m=16, refine_factor=4, num_negatives=k, extra=0,
            rerank=True), "nprobe", [48]),
    ]


def set_knob(miner: FaissMiner, knob: str, value: int) -> None:
    """Change a search-time parameter of the built index in place."""
    assert miner.index is not None
    index = miner.index.cpu
    if knob == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    elif knob == "efSearch":
        faiss.downcast_index(index.index).hnsw.efSearch = value


def exact_topk(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Exact top-k by ``torch.topk`` over chunks of queries; ids and queries/s."""
    start = time.perf_counter()
    ids = torch.cat([(chunk @ keys.T).topk(k, dim=1).indices for chunk in queries.split(512)])
    return ids, queries.shape[0] / (time.perf_counter() - start)


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(dim=2).float().mean())


def bench_indexes(setup: Setup, size: int, rows: list[str]) -> dict[str, Any]:
    keys, _ = clustered_keys(size, setup.dim, clusters=max(20, size // 1000), seed=0)
    bank = MemoryBank(size, setup.dim, seed=0)
    bank.update(keys, torch.arange(size), None, step=0)
    generator = torch.Generator().manual_seed(1)
    picked = torch.randperm(size, generator=generator)[: setup.queries]
    # A query is another view of a bank instance: its key plus a little noise.
    queries = F.normalize(keys[picked] + 0.3 * torch.randn(
        setup.queries, setup.dim, generator=generator) / setup.dim**0.5, dim=1)
    truth, exact_qps = exact_topk(queries, keys, setup.k)
    rows.append(f"| {size:,} | torch.topk (exact) | — | {exact_qps:,.0f} | 1.000 | 1.0× |")
    print(rows[-1], flush=True)
    results: dict[str, Any] = {"exact_qps": exact_qps}
    for name, cfg, knob, values in index_configs(size, setup.k):
        miner = FaissMiner(cfg, bank)
        start = time.perf_counter()
        miner.rebuild(0)
        build = time.perf_counter() - start
        for value in values:
            set_knob(miner, knob, value)
            label = f"{name} {knob}={value}" if knob else name
            start = time.perf_counter()
            if cfg.rerank:
                found = miner.negatives(queries, torch.full((setup.queries,), -1), None)
                found_ids = found.query_negative_ids
                assert found_ids is not None
            else:
                found_ids = miner.search(queries)[1][:, : setup.k]
            qps = setup.queries / (time.perf_counter() - start)
            rec = recall(found_ids, truth)
            rows.append(f"| {size:,} | {label} | {build:.1f} | {qps:,.0f} | {rec:.3f} | "
                        f"{qps / exact_qps:.1f}× |")
            print(rows[-1], flush=True)
            results[label] = {"qps": qps, "recall": rec, "build": build}
    results["bank"] = bank
    return results


class Encoder(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__(
            nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, dim)
        )


def train_step_seconds(setup: Setup) -> float:
    """Median seconds of one MoCo step: query fwd, key fwd, info_nce over the queue, bwd, step,
    momentum update, queue update."""
    torch.manual_seed(0)
    encoder = Encoder(setup.dim)
    key_encoder = MomentumEncoder(encoder, 0.999)
    optimiser = torch.optim.SGD(encoder.parameters(), lr=0.03, momentum=0.9)
    queue = KeyQueue(setup.queue, setup.dim)
    queue.update(F.normalize(torch.randn(setup.queue, setup.dim), dim=1),
                 torch.arange(setup.queue) + 10**7, None, 0)
    times = []
    for step in range(setup.train_steps + 2):
        x = torch.randn(setup.batch, 512)
        ids = torch.arange(setup.batch) + step * setup.batch
        start = time.perf_counter()
        query = F.normalize(encoder(x + 0.1 * torch.randn_like(x)), dim=1)
        key = F.normalize(key_encoder(x), dim=1)
        negatives = queue.negatives(query, ids, None)
        loss = info_nce(query, key, negatives.pool, temperature=0.2,
                        negative_mask=negatives.pool_mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        key_encoder.update(encoder)
        queue.update(key, ids, None, step)
        if step >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def mining_step_seconds(setup: Setup, bank: MemoryBank, cfg: MinerConfig, steps: int) -> dict:
    """Per-step miner cost at batch size ``setup.batch``: search+select, incremental refresh,
    rebuild (amortised over cfg.rebuild_every)."""
    miner = FaissMiner(cfg, bank)
    start = time.perf_counter()
    miner.rebuild(0)
    rebuild = time.perf_counter() - start
    generator = torch.Generator().manual_seed(5)
    search, refresh = [], []
    for step in range(1, steps + 1):
        ids = torch.randint(0, bank.size, (setup.batch,), generator=generator)
        query = F.normalize(bank.vectors[ids] + 0.05 * torch.randn(
            setup.batch, bank.dim, generator=generator), dim=1)
        start = time.perf_counter()
        miner.negatives(query, ids, None)
        search.append(time.perf_counter() - start)
        # The step's keys: drifted versions of the batch's entries.
        new = F.normalize(bank.vectors[ids] + 0.05 * torch.randn(
            setup.batch, bank.dim, generator=generator), dim=1)
        bank.update(new, ids, None, step)
        start = time.perf_counter()
        miner.dirty[ids] = True
        miner.refresh(step)
        refresh.append(time.perf_counter() - start)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {
        "search": median(search),
        "refresh": median(refresh),
        "rebuild": rebuild,
        "amortised_rebuild": rebuild / cfg.rebuild_every,
    }


# ----------------------------------------------------------------------------- memory


def _peak_memory_worker(layout: str, size: int, batch: int, dim: int) -> float:
    """Peak RSS growth (MiB) of one worker holding the queue and running the loss."""
    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rank, world = dist.rank(), dist.world_size()
    queue = KeyQueue(size, dim, sharded=layout == "sharded", rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(0)
    for chunk in range(0, size, 8192):
        keys = F.normalize(torch.randn(8192, dim, generator=generator), dim=1)
        queue.update(keys, torch.arange(chunk, chunk + 8192), None, 0)
    query = F.normalize(torch.randn(batch, dim), dim=1).requires_grad_(True)
    key = F.normalize(torch.randn(batch, dim), dim=1)
    ids = torch.arange(batch) + 10**7
    negatives = queue.negatives(query, ids, None)
    if negatives.pool_is_sharded:
        lse = sharded_pool_lse(query, negatives, ids, temperature=0.2, tile_size=8192)
        loss = info_nce(query, key, temperature=0.2, negative_lse=lse)
    else:
        loss = info_nce(query, key, negatives.pool, temperature=0.2,
                        negative_mask=negatives.pool_mask, tile_size=8192)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base) / 1024.0


def bench_memory(setup: Setup) -> list[str]:
    from tests.gloo import run_distributed

    rows = []
    for layout in ("replicated", "sharded"):
        peaks = run_distributed(
            _peak_memory_worker, layout, setup.memory_queue, setup.batch, setup.dim
        )
        rows.append(f"| {layout} | {setup.memory_queue:,} | {max(peaks):.0f} |")
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--threads", type=int, default=2, help="FAISS/torch threads")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"# mining benchmark ({'quick' if args.quick else 'full'}), {args.threads} threads")
    print("\n| bank | index | build s | queries/s | recall@k | vs exact |")
    print("|---|---|---|---|---|---|")
    rows: list[str] = []
    banks = {}
    for size in setup.sizes:
        banks[size] = bench_indexes(setup, size, rows)["bank"]
    step = train_step_seconds(setup)
    print(f"\ntraining step (MLP 512→1024→{setup.dim}, batch {setup.batch}, info_nce over a "
          f"{setup.queue:,} queue, momentum + queue update): {1000 * step:.1f} ms")
    size = setup.sizes[-1]
    nlist = 1 << max(4, round(2 * size**0.5).bit_length() - 1)
    cfg = MinerConfig(index="ivf_flat", nlist=nlist, nprobe=48, num_negatives=setup.k,
                      extra=16, rebuild_every=1000)
    cost = mining_step_seconds(setup, banks[size], cfg, steps=5 if args.quick else 20)
    total = cost["search"] + cost["refresh"] + cost["amortised_rebuild"]
    print(f"\nminer per step at {size:,} keys ({cfg.index}, nlist={nlist}, nprobe=48, batch "
          f"{setup.batch}, M={setup.k}+16, rebuild every {cfg.rebuild_every}):")
    print("| part | ms/step | share of training step |\n|---|---|---|")
    for name, seconds in (("search + filter/rerank", cost["search"]),
                          ("incremental refresh", cost["refresh"]),
                          (f"rebuild {cost['rebuild']:.1f} s / {cfg.rebuild_every}",
                           cost["amortised_rebuild"]),
                          ("total", total)):
        print(f"| {name} | {1000 * seconds:.1f} | {100 * seconds / step:.1f}% |")
    print(f"\nmining + refresh = {100 * total / (step + total):.1f}% of training time "
          "(miner / (step + miner))")
    if not args.skip_memory:
        print("\npeak RSS growth per worker, 2 gloo workers, queue + info_nce fwd/bwd:")
        print("| layout | queue K | MiB per worker (max over ranks) |\n|---|---|---|")
        bench_memory(setup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
