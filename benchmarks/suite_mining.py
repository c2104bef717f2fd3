"""Suite ``mining``: the FAISS miner against bank size, and the queue's memory per worker.

* Queries/s and recall@k of each index type against exact ``torch.topk``, on banks of a
  briefly trained encoder's keys (``mining.encoder_bank``) from 10⁴ to 10⁶ keys; searches
  repeated in rounds (every index once per round).
* Peak resident memory per worker of the queue + the loss, replicated against sharded, 2 gloo
  processes, against the queue size (``mining._peak_memory_worker``).

``mining.py`` keeps the detailed tables (step costs, the miner inside the real step).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mining  # noqa: E402
from dist_contrast.negatives import FaissMiner, MemoryBank, MinerConfig  # noqa: E402
from results import Stat, SuiteResult  # noqa: E402


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    setup: mining.Setup
    rounds: int
    queues: tuple[int, ...]


FULL = Plan(sizes=(10_000, 100_000, 1_000_000), setup=mining.FULL, rounds=2,
            queues=(16_384, 65_536, 262_144))
QUICK = Plan(sizes=(2_000, 8_000), setup=mining.QUICK, rounds=1, queues=(4_096, 16_384))


def indexes(size: int, k: int, mining_dim: int) -> list[tuple[str, MinerConfig, str, int]]:
    """(label, config, search knob, value): the settings the README's mining table uses
    (nlist ≈ 4·√n, a power of two, at least 39 keys a list; nprobe at most nlist)."""
    nlist = mining.nlist_for(size)
    while nlist > 16 and nlist * 39 > size:
        nlist //= 2
    common: dict[str, Any] = {"num_negatives": k, "extra": 0, "rerank": False,
                              "train_per_list": 16, "nlist": nlist, "quantizer": "flat"}
    configs: list[tuple[str, MinerConfig, str, int]] = []
    for index, name, nprobe in (("ivf_flat", "IVF-Flat", 32), ("ivf_fp16", "IVF fp16", 32),
                                ("ivf_fp16", "IVF fp16", 8)):
        nprobe = min(nprobe, nlist)
        config = MinerConfig(index=index, nprobe=nprobe, **common)  # type: ignore[arg-type]
        configs.append((f"{name} nprobe {nprobe}", config, "nprobe", nprobe))
    # Fast scan: half a byte per code, dim/2 codes of residuals (PQ64x4fsr at D = 128); its
    # scores are coarse, so 64 x the candidates are re-scored exactly against the bank. The
    # setting is the fastest of benchmarks/fast_scan.py's sweep at 1M keys with recall@64
    # near 0.9 (none reached 0.95 there).
    pq_m = mining_dim // 2
    configs.append((f"IVF-PQ{pq_m}x4fsr nprobe {min(32, nlist)}, exact rerank of 64×k",
                    MinerConfig(index="ivf_pq_fs", pq_m=pq_m, nprobe=min(32, nlist),
                                refine_factor=64, **{**common, "rerank": True}),
                    "nprobe", min(32, nlist)))
    configs.append(("HNSW M=16 efSearch 128",
                    MinerConfig(index="hnsw", hnsw_m=16, ef_construction=40, **common),
                    "efSearch", 128))
    return configs


def top_k(miner: FaissMiner, queries: torch.Tensor, k: int, batch: int = 256) -> torch.Tensor:
    """The miner's k best ids per query: the index's own order, or for an index with coarse
    scores (``rerank``) its ``refine_factor`` × candidates re-scored exactly against the bank,
    as the miner does in a step (``batch`` queries at a time, a step's batch: the candidates'
    keys are gathered for one batch, never for all the queries at once).

    Shape: queries [Q, D] -> ids [Q, k].
    """
    if not (miner.cfg.coarse_scores and miner.cfg.rerank):
        return miner.search(queries)[1][:, :k]
    found = []
    for chunk in queries.split(batch):
        _, ids, _ = miner.search(chunk)
        keys = miner.bank.vectors.index_select(0, ids.clamp(min=0).flatten())
        exact = torch.bmm(keys.view(*ids.shape, -1), chunk[:, :, None]).squeeze(2)
        exact = exact.masked_fill(ids < 0, float("-inf"))
        found.append(ids.gather(1, exact.topk(k, dim=1).indices))
    return torch.cat(found)


def bench_size(plan: Plan, size: int) -> dict[str, Any]:
    setup = plan.setup
    bank_keys = mining.encoder_bank(setup, size)
    keys, queries = bank_keys.keys, bank_keys.queries
    bank = MemoryBank(size, setup.dim, seed=0)
    bank.update(keys, torch.arange(size), None, step=0)
    truth, _ = mining.exact_topk(queries, keys, setup.k)
    miners = []
    for label, cfg, knob, value in indexes(size, setup.k, setup.dim):
        miner = FaissMiner(cfg, bank)
        start = time.perf_counter()
        miner.rebuild(0)
        build = time.perf_counter() - start
        mining.set_knob(miner, knob, value)
        recall = mining.recall(top_k(miner, queries, setup.k), truth)
        miners.append((label, miner, build, recall))
    qps: dict[str, list[float]] = {"exact torch.topk": []}
    qps.update({label: [] for label, *_ in miners})
    for _ in range(plan.rounds):
        qps["exact torch.topk"].append(mining.exact_topk(queries, keys, setup.k)[1])
        for label, miner, _, _ in miners:
            start = time.perf_counter()
            top_k(miner, queries, setup.k)
            qps[label].append(queries.shape[0] / (time.perf_counter() - start))
    return {"qps": qps, "build": {label: b for label, _, b, _ in miners},
            "recall": {label: r for label, _, _, r in miners}}


def run(result: SuiteResult, quick: bool) -> None:
    plan = QUICK if quick else FULL
    setup = plan.setup
    threads = torch.get_num_threads()
    faiss.omp_set_num_threads(threads)
    print(f"mining suite: banks of {list(plan.sizes)} keys, queues {list(plan.queues)}",
          flush=True)
    # Memory first, while this process is small (the workers are spawned, not forked).
    memory: dict[str, list[float]] = {"replicated": [], "sharded": []}
    from tests.gloo import run_distributed

    for size in plan.queues:
        for layout in memory:
            print(f"  memory: {layout} queue of {size:,}", flush=True)
            peaks = run_distributed(mining._peak_memory_worker, layout, size,
                                    setup.memory_batch, setup.dim)
            memory[layout].append(max(peaks))
    rows = result.table(
        "memory", "Peak resident memory per worker (max over 2 gloo ranks) of the queue + "
        f"info_nce fwd/bwd, batch {setup.memory_batch} per worker, D = {setup.dim}",
        ["queue keys", "replicated MiB", "sharded MiB", "replicated / sharded"])
    for i, size in enumerate(plan.queues):
        rep, sha = memory["replicated"][i], memory["sharded"][i]
        rows.append({"queue keys": size, "replicated MiB": rep, "sharded MiB": sha,
                     "replicated / sharded": rep / sha if sha else None})
    result.series["memory"] = {"queue": list(plan.queues), **memory}

    rows = result.table(
        "miner", f"Hard-negative search: {setup.queries:,} queries, k = {setup.k}, a trained "
        f"encoder's keys (D = {setup.dim}), faiss-cpu, {threads} threads; recall@k against "
        f"exact torch.topk; queries/s median over {plan.rounds} round(s)",
        ["keys", "index", "build s", "queries/s", "recall@k", "vs exact"])
    curves: dict[str, dict[str, list[Any]]] = {}
    for size in plan.sizes:
        print(f"  miner: bank of {size:,} keys", flush=True)
        found = bench_size(plan, size)
        exact = found["qps"]["exact torch.topk"]
        for label, values in found["qps"].items():
            is_exact = label.startswith("exact")
            recall = 1.0 if is_exact else found["recall"][label]
            rows.append({
                "keys": size, "index": label,
                "build s": None if is_exact else found["build"][label],
                "queries/s": Stat.of(values, "q/s"), "recall@k": recall,
                "vs exact": Stat.of([v / e for v, e in zip(values, exact, strict=True)], "×"),
            })
            curve = curves.setdefault(label, {"keys": [], "qps": [], "recall": []})
            curve["keys"].append(size)
            curve["qps"].append(Stat.of(values).median)
            curve["recall"].append(recall)
    result.series["miner"] = curves
