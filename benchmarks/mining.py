"""Benchmark of the hard-negative miner and the sharded queue (not a timed test).

Banks (both L2-normalised, D = 128; the score is the inner product):

* ``encoder``: keys of an MLP encoder (``configs/moco_mined.yaml``'s model, embedding 128)
  briefly trained with in-batch InfoNCE on the synthetic dataset (``dist_contrast.data``),
  then run over the clean rows; the queries are the encoder's embeddings of fresh views of
  random bank instances. This is the realistic bank: its neighbourhoods are what a partly
  trained encoder produces.
* ``clustered``: ``negatives.synthetic.clustered_keys`` (overlapping clusters with noise
  norm 1–2.5× the centre's). In 128 dimensions this is nearly uniform on the sphere (mean
  top-64 similarity ≈ 0.35, like random vectors): a worst case kept for comparison.

Measured, all in one run:

* queries/s (one search call of all queries) and recall@k of each FAISS index type against
  exact ``torch.topk`` over the same bank;
* the real training step (``dist_contrast.train.step.TrainStep``, built by the trainer's own
  factories ``build_engine``/``build_step``: DeepSpeed on CPU, one process) of the MoCo + mined
  configuration *without* the miner (``negatives.sources`` minus ``bank``/``mined``), and the
  miner's per-step cost per index type (search + filter/rerank of one worker's batch, then
  ``FaissMiner.update`` under the shipped refresh/rebuild policy) as a share of that step
  (see ``step_without_miner`` and ``mining_step_seconds`` for exactly what each contains);
* the miner's share of the real step *with* the miner (``miner_share_in_step``): the quantity
  ``miner/time_share`` logs in training;
* the peak resident memory per worker of the queue + loss, replicated vs sharded, with
  2 gloo processes.

Run ``python benchmarks/mining.py`` (full; the 1,000,000-key banks take minutes) or
``--quick`` for a small smoke run. Results are printed as Markdown tables.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dist_contrast import dist  # noqa: E402
from dist_contrast.config import Config, load_config  # noqa: E402
from dist_contrast.data import DataBundle, build_data, make_loader  # noqa: E402
from dist_contrast.data.synthetic import SyntheticSource  # noqa: E402
from dist_contrast.losses import info_nce  # noqa: E402
from dist_contrast.models.build import build_model  # noqa: E402
from dist_contrast.negatives import (  # noqa: E402
    FaissMiner,
    KeyQueue,
    MemoryBank,
    MinerConfig,
)
from dist_contrast.negatives.collective import sharded_pool_lse  # noqa: E402
from dist_contrast.negatives.synthetic import clustered_keys  # noqa: E402
from dist_contrast.train.step import Batch, TrainStep  # noqa: E402
from dist_contrast.train.worker import build_engine, build_step  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "moco_mined.yaml"


@dataclass
class Setup:
    sizes: list[int]
    queries: int
    k: int
    dim: int
    encoder_steps: int
    memory_queue: int
    train_steps: int
    mining_steps: int
    # Global batch = workers × per-worker batch: every worker's bank and index see all of it.
    workers: int = 2
    memory_batch: int = 256


FULL = Setup([100_000, 1_000_000], 4096, 64, 128, 200, 262_144, 10, 40)
# Quick: 10 timed steps, not 2: the real step takes ~10 ms here, and a median of 2 on a shared
# machine is one unlucky time slice.
QUICK = Setup([4_000], 128, 16, 32, 5, 8192, 10, 12, memory_batch=32)


def nlist_for(size: int) -> int:
    """IVF lists ≈ 4·√n, a power of two (4096 at 1M)."""
    return 1 << max(4, round(math.log2(4 * size**0.5)))


def index_configs(size: int, k: int) -> list[tuple[str, MinerConfig, str, list[int]]]:
    """Index settings compared: (name, config, search knob, knob values)."""
    nlist = nlist_for(size)
    # Cheap k-means: 16 points per list (a warm-started rebuild needs no more, see below).
    common: dict[str, Any] = {
        "num_negatives": k, "extra": 0, "rerank": False, "train_per_list": 16
    }
    return [
        ("exact (IndexFlatIP)", MinerConfig(index="exact", **common), "", [0]),
        (f"ivf_flat nlist={nlist}, flat quantizer",
         MinerConfig(index="ivf_flat", nlist=nlist, quantizer="flat", **common),
         "nprobe", [16, 32]),
        (f"ivf_flat nlist={nlist}, HNSW32 quantizer",
         MinerConfig(index="ivf_flat", nlist=nlist, quantizer="hnsw", ef_search=32, **common),
         "nprobe", [16, 32]),
        # float16 keys: half the bytes to scan; scores good enough to keep the candidate set.
        (f"ivf_fp16 nlist={nlist}, flat quantizer",
         MinerConfig(index="ivf_fp16", nlist=nlist, quantizer="flat", **common),
         "nprobe", [16, 24, 32]),
        # Timed through miner.negatives: search of 2k candidates + exact rerank against the bank.
        (f"ivf_sq8 nlist={nlist}, flat quantizer, exact rerank of 2k",
         MinerConfig(index="ivf_sq8", nlist=nlist, quantizer="flat", refine_factor=2,
                     **{**common, "rerank": True}),
         "nprobe", [24, 32]),
        ("hnsw M=16 efConstruction=40",
         MinerConfig(index="hnsw", hnsw_m=16, ef_construction=40, **common),
         "efSearch", [64, 128]),
        # A denser, more carefully built graph reaches the same recall with a narrower beam.
        ("hnsw M=32 efConstruction=200",
         MinerConfig(index="hnsw", hnsw_m=32, ef_construction=200, **common),
         "efSearch", [48, 56, 64]),
    ]


def set_knob(miner: FaissMiner, knob: str, value: int) -> None:
    """Change a search-time parameter of the built index in place."""
    assert miner.index is not None
    index: Any = miner.index.cpu  # faiss's Python types do not declare the subclasses' fields
    if knob == "nprobe":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = value
        if miner.cfg.quantizer == "hnsw":
            quantizer: Any = faiss.downcast_index(ivf.quantizer)
            quantizer.hnsw.efSearch = max(miner.cfg.ef_search, value)
    elif knob == "efSearch":
        hnsw: Any = faiss.downcast_index(index.index)
        hnsw.hnsw.efSearch = value


def exact_topk(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Exact top-k by ``torch.topk`` over chunks of queries; ids and queries/s."""
    start = time.perf_counter()
    ids = torch.cat([(chunk @ keys.T).topk(k, dim=1).indices for chunk in queries.split(512)])
    return ids, queries.shape[0] / (time.perf_counter() - start)


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(dim=2).float().mean())


# ----------------------------------------------------------------------------- banks


def experiment_config(dim: int) -> Config:
    """``configs/moco_mined.yaml`` with the embedding at the benchmark's D."""
    return load_config(CONFIG, [f"model.embedding_dim={dim}"])


def synthetic_source(cfg: Config, size: int) -> SyntheticSource:
    data = cfg.data
    return SyntheticSource(
        seed=0, size=size, first_id=0, num_classes=data.num_classes, dim=data.dim,
        signal_dim=data.signal_dim, within_class_scale=data.within_class_scale,
        nuisance_scale=data.nuisance_scale, noise_scale=data.noise_scale,
    )


@dataclass
class Bank:
    """A bank of unit keys, query views of some of its instances, and (encoder bank only) the
    trained encoder's weights, which the real steps start from.

    Shape: keys [size, D], queries [Q, D], query_ids [Q].
    """

    keys: torch.Tensor
    queries: torch.Tensor
    query_ids: torch.Tensor
    encoder_state: dict[str, torch.Tensor] | None = None


def encoder_bank(setup: Setup, size: int) -> Bank:
    """Keys of a briefly trained encoder over ``size`` synthetic rows, query views, their ids."""
    cfg = experiment_config(setup.dim)
    source = synthetic_source(cfg, size)
    torch.manual_seed(0)
    model = build_model(cfg.model, source.input_shape)
    # Only to give the bank a partly trained encoder's geometry; this loop is never timed.
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(setup.encoder_steps):
        ids = torch.randint(0, size, (256,), generator=generator)
        query = model(source.views(ids, 2 * step))
        key = model(source.views(ids, 2 * step + 1))
        loss = info_nce(query, key, temperature=cfg.loss.temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        keys = torch.cat([
            model(source.clean(torch.arange(lo, min(size, lo + 65_536))))
            for lo in range(0, size, 65_536)
        ])
        query_ids = torch.randperm(size, generator=generator)[: setup.queries]
        queries = model(source.views(query_ids, 10**6))
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return Bank(keys.contiguous(), queries.contiguous(), query_ids, state)


def clustered_bank(setup: Setup, size: int) -> Bank:
    """``clustered_keys``; a query is a bank key plus a little noise."""
    keys, _ = clustered_keys(size, setup.dim, clusters=max(20, size // 1000), seed=0)
    generator = torch.Generator().manual_seed(1)
    query_ids = torch.randperm(size, generator=generator)[: setup.queries]
    noise = torch.randn(setup.queries, setup.dim, generator=generator) / setup.dim**0.5
    return Bank(keys, F.normalize(keys[query_ids] + 0.3 * noise, dim=1), query_ids)


def bench_indexes(
    setup: Setup, name: str, keys: torch.Tensor, queries: torch.Tensor, only_ivf: bool
) -> dict[str, Any]:
    """One row per (index, knob value) for one bank; returns the exact rate and the rows."""
    size = keys.shape[0]
    bank = MemoryBank(size, setup.dim, seed=0)
    bank.update(keys, torch.arange(size), None, step=0)
    truth, exact_before = exact_topk(queries, keys, setup.k)
    top_sim = float(torch.einsum("qd,qkd->qk", queries[:256], keys[truth[:256]]).mean())
    print(f"\n{name} bank, {size:,} keys: mean top-{setup.k} similarity {top_sim:.3f}",
          flush=True)
    print(f"| {size:,} | {name} | torch.topk (exact), before | — | {exact_before:,.0f} | 1.000 "
          "| 1.0× |", flush=True)
    rows = []
    results: dict[str, Any] = {}
    for label, cfg, knob, values in index_configs(size, setup.k):
        if only_ivf and cfg.index not in ("ivf_flat", "ivf_fp16"):
            continue
        miner = FaissMiner(cfg, bank)
        start = time.perf_counter()
        miner.rebuild(0)
        build = time.perf_counter() - start
        for value in values:
            set_knob(miner, knob, value)
            row = f"{label}, {knob}={value}" if knob else label
            start = time.perf_counter()
            if cfg.rerank:
                found = miner.negatives(queries, torch.full((setup.queries,), -1), None)
                assert found.query_negative_ids is not None
                found_ids = found.query_negative_ids
            else:
                found_ids = miner.search(queries)[1][:, : setup.k]
            qps = setup.queries / (time.perf_counter() - start)
            rec = recall(found_ids, truth)
            rows.append((row, build, qps, rec))
            print(f"| {size:,} | {name} | {row} | {build:.1f} | {qps:,.0f} | {rec:.3f} | "
                  f"{qps / exact_before:.1f}× |", flush=True)
            results[row] = {"qps": qps, "recall": rec, "build": build}
        del miner
    # Exact top-k again after the indexes: the speed-ups divide by the faster of the two
    # exact runs, so a load change on a shared machine cannot inflate them.
    exact_after = exact_topk(queries, keys, setup.k)[1]
    exact_qps = max(exact_before, exact_after)
    results["exact_qps"] = exact_qps
    print(f"| {size:,} | {name} | torch.topk (exact), after | — | {exact_after:,.0f} | 1.000 "
          "| 1.0× |", flush=True)
    print(f"\n{name} bank, {size:,} keys, speed-ups against the faster exact run "
          f"({exact_qps:,.0f} q/s):\n| index | build s | queries/s | recall@k | vs exact |"
          "\n|---|---|---|---|---|")
    for row, build, qps, rec in rows:
        print(f"| {row} | {build:.1f} | {qps:,.0f} | {rec:.3f} | {qps / exact_qps:.1f}× |")
    print(flush=True)
    return results


# ----------------------------------------------------------------------------- step costs


WARMUP_STEPS = 2  # not timed: DeepSpeed's and the allocator's first-call costs, the first build


def step_config(setup: Setup, quick: bool, keys: int, sources: list[str] | None = None) -> Config:
    """``configs/moco_mined.yaml`` as this benchmark runs it (quick: batch 32, queue 2048).

    Overridden: the embedding (D of the banks); the synthetic training split, ``keys`` rows,
    so the step's bank is the size of the benchmark's largest bank; the miner's ``nlist``
    (``nlist_for(keys)``, as in the index table) and its FAISS threads; ``sources`` replaces
    ``negatives.sources`` when given. Everything else, the miner's policy included, as shipped.
    """
    overrides = [
        f"model.embedding_dim={setup.dim}",
        f"data.num_samples={keys + keys // 4}", f"data.num_test={keys // 4}",
        f"negatives.miner.nlist={nlist_for(keys)}",
        # FAISS threads as torch's (main sets both from --threads).
        f"negatives.miner.num_threads={torch.get_num_threads()}",
    ]
    if quick:
        overrides += ["trainer.batch_size=32", "negatives.queue.size=2048"]
    if sources is not None:
        overrides.append(f"negatives.sources=[{','.join(sources)}]")
    return load_config(CONFIG, overrides)


@contextmanager
def one_process_group() -> Iterator[None]:
    """A gloo process group of one rank around the real steps (left alone if one is up).

    DeepSpeed needs a process group; at world size 1 the package's gathers and reductions
    are identities, so the timed step has no communication. DeepSpeed runs on the CPU unless
    ``DS_ACCELERATOR`` says otherwise: the miner (faiss-cpu) and this benchmark's threads are
    CPU figures. On exit the group and the environment are undone (the smoke test runs this
    inside pytest).
    """
    if torch.distributed.is_initialized():
        yield
        return
    env = {"LOCAL_RANK": "0", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            torch.distributed.init_process_group(
                "gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1
            )
            try:
                yield
            finally:
                _destroy_process_group()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _destroy_process_group() -> None:
    """DeepSpeed's teardown when it has seen the group: it also drops the groups it cached
    from it, which a later group in this process (a second ``main``) would not know."""
    import deepspeed.comm

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    else:
        torch.distributed.destroy_process_group()


@dataclass
class RealStep:
    """The trainer's step and batches of its loader, made before any timing."""

    step: TrainStep
    batches: list[Batch]
    count: int = 0

    def run(self, steps: int) -> list[float]:
        """Wall seconds of each of the next ``steps`` steps (the batches are reused in turn)."""
        times = []
        for _ in range(steps):
            batch = self.batches[self.count % len(self.batches)]
            start = time.perf_counter()
            self.step(batch, self.count)
            times.append(time.perf_counter() - start)
            self.count += 1
        return times


def build_real_step(cfg: Config, bank: Bank, batches: int) -> RealStep:
    """The real step of ``cfg`` in ``build_worker``'s order, its encoder starting from the
    encoder bank's trained encoder, and its pools full (``fill_pools``)."""
    assert bank.encoder_state is not None
    torch.manual_seed(cfg.experiment.seed)
    data = build_data(cfg.data, seed=cfg.experiment.seed)
    encoder = build_model(cfg.model, data.input_shape)
    # Queries from the encoder that made the bank's keys: the index's lists fit them, as in
    # training, where the bank holds the current encoder's keys.
    encoder.load_state_dict(bank.encoder_state)
    step = build_step(cfg, build_engine(cfg, encoder), data, encoder)
    fill_pools(step, bank.keys)
    return RealStep(step, loader_batches(cfg, data, batches))


def loader_batches(cfg: Config, data: DataBundle, count: int) -> list[Batch]:
    """The first ``count`` batches of the trainer's loader (rank 0 of 1), epoch after epoch."""
    batches: list[Batch] = []
    epoch = 0
    while len(batches) < count:
        loader = make_loader(
            data.train, batch_size=cfg.trainer.batch_size, rank=0, world_size=1,
            seed=cfg.experiment.seed, epoch=epoch, drop_last=cfg.model.batch_norm,
        )
        for batch in loader:
            if len(batches) == count:
                break
            batches.append(batch)
        epoch += 1
    return batches


def fill_pools(step: TrainStep, keys: torch.Tensor) -> None:
    """Start full, as a run is after its first epoch: the queue holds the bank's first keys
    (an empty queue would make the loss cheaper), the bank (if any) all of them, so the
    miner's first search builds its index over the whole bank."""
    pool = step.pool
    assert pool is not None and pool.queue is not None
    size = min(pool.queue.size, keys.shape[0])
    pool.queue.update(keys[:size], torch.arange(size), None, 0)
    if pool.bank is not None:
        pool.bank.update(keys, torch.arange(keys.shape[0]), None, 0)


def step_without_miner(setup: Setup, quick: bool, bank: Bank) -> RealStep:
    """The real step of the MoCo + mined configuration with ``negatives.sources`` minus
    ``bank`` and ``mined`` (so: batch + queue), for ``median_step_seconds``.

    Timed per step, exactly ``TrainStep.__call__``: query forward through the DeepSpeed engine
    on view 1; momentum key encoder on view 2 (no grad, shuffle-BN); the gathers (identities
    in one process); the queue's negatives; ``info_nce`` over the in-batch keys + the queue
    (``tile_size`` from the config); ``engine.backward``, ``engine.step`` (AdamW, warm-up LR
    schedule); momentum update; queue update. Not timed: making the batches (the loader,
    before timing), cross-worker communication (one process), the bank, the miner and the
    mined negatives in the loss (measured separately), diagnostics.
    """
    keys = bank.keys.shape[0]
    sources = [name for name in step_config(setup, quick, keys).negatives.sources
               if name not in ("bank", "mined")]
    cfg = step_config(setup, quick, keys, sources)
    return build_real_step(cfg, bank, WARMUP_STEPS + setup.train_steps)


def median_step_seconds(real: RealStep, setup: Setup) -> float:
    """Median wall seconds of ``setup.train_steps`` real steps after ``WARMUP_STEPS``."""
    real.run(WARMUP_STEPS)
    times = sorted(real.run(setup.train_steps))
    return times[len(times) // 2]


def miner_share_in_step(setup: Setup, quick: bool, bank: Bank) -> dict[str, float]:
    """The miner's share of the real step's wall time: what ``miner/time_share`` logs.

    The real step of ``step_config`` with moco_mined's own sources (batch, queue, bank, mined)
    and miner policy (refresh every ``refresh_every``; rebuilds by the adaptive rent-or-buy
    rule, ``rebuild_every`` at the latest). Its bank is pre-filled with the encoder bank's
    keys, so the first search builds the index over all of them (cold, in the warm-up).
    After ``WARMUP_STEPS``, ``setup.mining_steps`` steps: the miner's own clock
    (``FaissMiner.total_seconds``: search, selection, update, refreshes, rebuilds) over the
    steps' wall time. One process: the bank takes B keys per step, not a W-worker run's W·B.
    """
    cfg = step_config(setup, quick, bank.keys.shape[0])
    real = build_real_step(cfg, bank, WARMUP_STEPS + setup.mining_steps)
    pool = real.step.pool
    assert pool is not None and pool.miner is not None
    miner = pool.miner
    real.run(WARMUP_STEPS)
    seconds, rebuilds = miner.total_seconds, miner.counters.rebuilds
    times = real.run(setup.mining_steps)
    wall, mined = sum(times), miner.total_seconds - seconds
    return {
        "steps": float(len(times)), "wall": wall, "median": sorted(times)[len(times) // 2],
        "miner": mined, "share": mined / wall,
        "rebuilds": float(miner.counters.rebuilds - rebuilds),
    }


def mining_step_seconds(
    setup: Setup, bank: MemoryBank, queries: torch.Tensor, query_ids: torch.Tensor,
    cfg: MinerConfig, batch: int,
) -> dict[str, float]:
    """One worker's miner cost per training step, in seconds, under ``cfg``'s policy.

    The index is first built cold over the whole bank (every entry written, as after an
    epoch). Then each of ``setup.mining_steps`` steps: ``negatives`` for ``batch`` queries
    (search + rerank + filter + gather: "search"), then the bank and the miner absorb the
    *global* batch (``setup.workers`` × ``batch`` keys: the step's query embeddings, i.e.
    drifted versions of those entries); ``miner.update`` ("update") marks them dirty and does
    what ``miner_policy.decide`` says: the incremental refresh every ``refresh_every`` steps,
    or a rebuild if a rule fires ("rebuilds": counted, and inside "update"). Last, one warm
    rebuild is timed (k-means from the previous centroids, ``retrain_iterations``).

    The rebuild column. The shipped config rebuilds by rent-or-buy (``adaptive_rebuild``):
    when the searches' extra scanning since the last build, priced from FAISS's scan counts,
    has cost as much as that build. The interval is set by the encoder's drift, which fixed
    queries do not have, so it cannot be measured here: "rebuild_floor" (warm rebuild /
    ``rebuild_every``, the longest interval the policy allows) is a lower bound on the
    rebuilds' cost per step, not its expectation. ``miner_share_in_step`` (the real step)
    and ``miner_share.py`` (real runs) measure the policy itself.
    """
    miner = FaissMiner(cfg, bank)
    start = time.perf_counter()
    miner.rebuild(0)
    cold = time.perf_counter() - start
    generator = torch.Generator().manual_seed(5)
    search, update, hardness = [], [], []
    global_batch = setup.workers * batch
    for step in range(1, setup.mining_steps + 1):
        rows = torch.randint(0, queries.shape[0], (global_batch,), generator=generator)
        ids, keys = query_ids[rows], queries[rows]
        start = time.perf_counter()
        mined = miner.negatives(keys[:batch], ids[:batch], None)
        search.append(time.perf_counter() - start)
        hardness.append(mined.metrics["miner/negative_similarity"])
        bank.update(keys, ids, None, step)
        start = time.perf_counter()
        miner.update(keys, ids, None, step)
        update.append(time.perf_counter() - start)
    rebuilds = miner.counters.rebuilds - 1
    start = time.perf_counter()
    miner.rebuild(setup.mining_steps)
    warm = time.perf_counter() - start
    return {
        "search": sorted(search)[len(search) // 2],
        "update": sum(update) / len(update),
        "refreshes": float(setup.mining_steps // cfg.refresh_every),
        "rebuilds": float(rebuilds),
        "candidates": float(miner.candidates),
        "cold_rebuild": cold,
        "rebuild": warm,
        "rebuild_floor": warm / cfg.rebuild_every,
        "negative_similarity": sum(hardness) / len(hardness),
    }


# ----------------------------------------------------------------------------- memory


def _high_water_mib() -> float:
    """This process's peak resident memory (MiB) since its exec.

    ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over fork + exec, so a worker
    spawned by a large parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_memory_worker(layout: str, size: int, batch: int, dim: int) -> float:
    """Peak RSS growth (MiB) of one worker holding the queue and running the loss."""
    torch.set_num_threads(1)
    base = _high_water_mib()
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
    return _high_water_mib() - base


def bench_memory(setup: Setup) -> list[str]:
    from tests.gloo import run_distributed

    rows = []
    for layout in ("replicated", "sharded"):
        peaks = run_distributed(
            _peak_memory_worker, layout, setup.memory_queue, setup.memory_batch, setup.dim
        )
        rows.append(f"| {layout} | {setup.memory_queue:,} | {max(peaks):.0f} |")
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- main


def best_point(results: dict[str, Any], target: float) -> tuple[str, dict[str, Any]] | None:
    """The fastest approximate row at recall ≥ ``target``."""
    rows = [(name, row) for name, row in results.items()
            if isinstance(row, dict) and not name.startswith("exact") and row["recall"] >= target]
    return max(rows, key=lambda item: item[1]["qps"]) if rows else None


def print_step_costs(
    setup: Setup, cfg: MinerConfig, cost: dict[str, float], step: float, batch: int
) -> None:
    total = cost["search"] + cost["update"] + cost["rebuild_floor"]
    print(f"\nminer per step, one worker, {setup.sizes[-1]:,} keys: {cfg.index} "
          f"nlist={cfg.nlist}, {cfg.quantizer} quantizer, nprobe={cfg.nprobe}, "
          f"{cost['candidates']:.0f} candidates reranked for M={cfg.num_negatives}; "
          f"global batch {setup.workers}×{batch}; refresh every {cfg.refresh_every}, "
          f"adaptive rebuild {cfg.adaptive_rebuild}, rebuild every {cfg.rebuild_every} at the "
          f"latest (cold build {cost['cold_rebuild']:.1f} s):")
    print("| part | ms/step | share of training step |\n|---|---|---|")
    for name, seconds in (
        ("search + rerank/filter/gather (median)", cost["search"]),
        (f"update: refresh + policy rebuilds (mean over {setup.mining_steps} steps, "
         f"{cost['refreshes']:.0f} refreshes due, {cost['rebuilds']:.0f} rebuilds)",
         cost["update"]),
        (f"warm rebuild {cost['rebuild']:.1f} s / {cfg.rebuild_every} (floor: the adaptive "
         "rule rebuilds sooner as the encoder drifts)", cost["rebuild_floor"]),
        ("total", total),
    ):
        print(f"| {name} | {1000 * seconds:.1f} | {100 * seconds / step:.1f}% |")
    print(f"\nmining + refresh = {100 * total / (step + total):.1f}% of training time "
          "(miner / (step + miner)); mean similarity of the mined negatives "
          f"{cost['negative_similarity']:.4f}", flush=True)


def describe_step(cfg: Config, setup: Setup, seconds: float, when: str) -> None:
    negatives = cfg.negatives
    print(f"\nreal training step without the miner, {when} (TrainStep via build_engine/"
          f"build_step, DeepSpeed on CPU, one process; sources {negatives.sources}; "
          f"{cfg.model.name} encoder with BatchNorm, batch {cfg.trainer.batch_size}, info_nce "
          f"over in-batch + {negatives.queue.size:,}-key queue (tile {cfg.loss.tile_size}); "
          "fwd + momentum fwd (shuffle-BN) + bwd + AdamW + momentum + queue update; median of "
          f"{setup.train_steps} after {WARMUP_STEPS} warm-up): {1000 * seconds:.1f} ms",
          flush=True)


def print_in_step_share(cfg: Config, keys: int, share: dict[str, float]) -> None:
    miner = cfg.negatives.miner
    print(f"\nminer inside the real step (sources {cfg.negatives.sources}, batch "
          f"{cfg.trainer.batch_size}, {keys:,}-key bank pre-filled with the encoder's keys; "
          f"{miner.index} nlist={miner.nlist} nprobe={miner.nprobe}, refresh every "
          f"{miner.refresh_every}, adaptive rebuild {miner.adaptive_rebuild}; "
          f"{share['steps']:.0f} steps after {WARMUP_STEPS} warm-up):")
    print("| steps | wall s | step ms (median) | miner s | miner/time_share | policy rebuilds |"
          "\n|---|---|---|---|---|---|")
    print(f"| {share['steps']:.0f} | {share['wall']:.2f} | {1000 * share['median']:.1f} | "
          f"{share['miner']:.2f} | {100 * share['share']:.1f}% | {share['rebuilds']:.0f} |",
          flush=True)


def print_load(when: str) -> None:
    """The machine's load averages: other processes on a shared machine skew the timings."""
    one, five, fifteen = os.getloadavg()
    print(f"\nload average {when}: {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)",
          flush=True)


def bench_index_tables(setup: Setup) -> Bank:
    """The index tables of every bank and size, and target 1; returns the largest encoder
    bank (the one the step costs use)."""
    print("\n| keys | bank | index | build s | queries/s | recall@k | vs exact |")
    print("|---|---|---|---|---|---|---|")
    largest = setup.sizes[-1]
    kept: Bank | None = None
    target_results: dict[str, Any] = {}
    for size in setup.sizes:
        for name, make in (("encoder", encoder_bank), ("clustered", clustered_bank)):
            bank = make(setup, size)
            results = bench_indexes(setup, name, bank.keys, bank.queries,
                                    only_ivf=name == "clustered")
            if name == "encoder" and size == largest:
                kept, target_results = bank, results
            del bank
    best = best_point(target_results, 0.95)
    exact_qps = target_results.get("exact_qps", 0.0)
    if best is None:
        print(f"\ntarget 1 at {largest:,} (encoder bank): no index reached recall@k ≥ 0.95")
    else:
        name, row = best
        print(f"\ntarget 1 at {largest:,} (encoder bank): {name}: recall {row['recall']:.3f}, "
              f"{row['qps']:,.0f} q/s = {row['qps'] / exact_qps:.1f}× exact torch.topk "
              f"({exact_qps:,.0f} q/s)")
    assert kept is not None
    return kept


def mining_configs(cfg: MinerConfig, keys: int) -> list[MinerConfig]:
    """The miner as shipped (policy, k-means sample) at the index settings compared.

    (index, quantizer, nprobe): recall@64 0.97 and 0.88 with float16 keys (see the index
    table), the float32 ivf_flat at recall 0.97 for comparison, and the exact index: far too
    slow to train with, it is the reference for how hard the mined negatives are.
    """
    nlist = nlist_for(keys)
    return [
        cfg.model_copy(update={
            "index": index, "nlist": nlist, "nprobe": min(nprobe, nlist),
            "quantizer": quantizer, "ef_search": 32,
        })
        for index, quantizer, nprobe in (
            ("ivf_fp16", "flat", 32), ("ivf_fp16", "flat", 16), ("ivf_flat", "flat", 32),
            ("exact", "flat", 1),
        )
    ]


def bench_step_costs(setup: Setup, quick: bool, kept: Bank) -> None:
    """The real step without the miner, the miner's costs per index, and its share inside
    the real step."""
    keys = kept.keys.shape[0]
    cfg = step_config(setup, quick, keys)
    batch = cfg.trainer.batch_size
    with one_process_group():
        plain = step_without_miner(setup, quick, kept)
        step_before = median_step_seconds(plain, setup)
        describe_step(plain.step.cfg, setup, step_before, "before the miner")
        costs = []
        for mining_cfg in mining_configs(cfg.negatives.miner, keys):
            bank = MemoryBank(keys, setup.dim, seed=0)
            bank.update(kept.keys, torch.arange(keys), None, step=0)
            costs.append((mining_cfg, mining_step_seconds(
                setup, bank, kept.queries, kept.query_ids, mining_cfg, batch)))
            del bank
        # The step again after the miner: the shares divide by the faster of the two, so a
        # quieter moment cannot flatter them.
        step_after = median_step_seconds(plain, setup)
        describe_step(plain.step.cfg, setup, step_after, "after the miner")
        del plain
        share = miner_share_in_step(setup, quick, kept)
    step = min(step_before, step_after)
    for mining_cfg, cost in costs:
        print_step_costs(setup, mining_cfg, cost, step, batch)
    print_summary(costs, step)
    print_in_step_share(cfg, keys, share)


def print_summary(costs: list[tuple[MinerConfig, dict[str, float]]], step: float) -> None:
    print(f"\nsummary, ms per real training step of {1000 * step:.1f} ms without the miner "
          "(share = miner / (step + miner)):\n| index | search + select | update (refresh, "
          "policy rebuilds) | rebuild floor (÷ rebuild_every) | total | share "
          "| mined-negative similarity |\n|---|---|---|---|---|---|---|")
    for mining_cfg, cost in costs:
        total = cost["search"] + cost["update"] + cost["rebuild_floor"]
        name = mining_cfg.index if mining_cfg.index == "exact" else (
            f"{mining_cfg.index} nprobe={mining_cfg.nprobe}")
        print(f"| {name} | {1000 * cost['search']:.1f} | {1000 * cost['update']:.1f} | "
              f"{1000 * cost['rebuild_floor']:.1f} | {1000 * total:.1f} | "
              f"{100 * total / (step + total):.1f}% | {cost['negative_similarity']:.4f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--threads", type=int, default=2, help="FAISS/torch threads")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--step-costs-only", action="store_true",
                        help="skip the index tables: only the largest encoder bank, the training "
                             "step and the miner's step costs (a re-run of target 2)")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    print(f"# mining benchmark ({'quick' if args.quick else 'full'}), {args.threads} threads")
    print_load("start")
    if not args.skip_memory:
        # First, while this process is small: forked workers inherit its peak RSS, and the
        # growth above that peak is what is reported.
        print("\npeak RSS growth per worker, 2 gloo workers, queue + info_nce fwd/bwd:")
        print("| layout | queue K | MiB per worker (max over ranks) |\n|---|---|---|")
        bench_memory(setup)
    if args.step_costs_only:
        kept = encoder_bank(setup, setup.sizes[-1])
    else:
        kept = bench_index_tables(setup)
    bench_step_costs(setup, args.quick, kept)
    print_load("after the step costs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
