"""The ``mined`` source: hard negatives searched in a FAISS index over the memory bank, with
its settings (``negatives.miner``), checks and memory. The miner itself is
:class:`~dist_contrast.negatives.miner.FaissMiner` (``miner.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dist_contrast.negatives.base import NegativeSource
from dist_contrast.negatives.registry import (
    Layout,
    LossNeeds,
    MemoryContext,
    MemoryTerm,
    SourceContext,
    SourceSpec,
    register_source,
)
from dist_contrast.section import Section

NAME = "mined"
# The source it indexes (the miner's index is over the memory bank's keys).
BANK = "bank"
# The miner's key in the pool and its checkpoint, and its settings section.
KEY = "miner"

# FAISS per-key overheads beyond the codes, measured at 200k keys, D = 64 (faiss-cpu 1.15):
# IVF lists hold an 8-byte id per key, the hash-table direct map (``remove_ids``) an entry,
# and the lists grow by doubling (69-110 B measured); IndexIDMap2 (exact, HNSW) keeps an id
# and a reverse-map entry (51 B measured); HNSW's levels and offsets ~24 B.
IVF_OVERHEAD = 112
IDMAP_OVERHEAD = 56
HNSW_LEVELS = 24


class MinerConfig(Section):
    """FAISS hard-negative miner over the bank's keys."""

    # ivf_fp16 stores each key as float16: half the bytes of ivf_flat to scan (measured ~1.6×
    # faster search at 1M keys), with scores accurate to ~1e-3, enough to keep the candidate
    # set (measured: the same recall@64 as ivf_flat); rerank then orders them exactly.
    # ivf_sq8 stores each key as 8-bit scalars (4× less memory to scan than ivf_flat); its
    # scores are coarse, so it searches refine_factor × the candidates and re-scores them
    # exactly, like ivf_pq. ivf_pq_fs is IVF-PQ with 4-bit codes scanned in SIMD registers
    # (FAISS's fast scan): pq_m half-bytes per key, the fastest to scan; its scores are
    # coarse too (refine_factor, rerank). It cannot remove entries (every refresh rebuilds,
    # as for hnsw) and FAISS-GPU has no fast scan (it stays on the CPU).
    index: Literal["exact", "ivf_flat", "ivf_fp16", "ivf_sq8", "hnsw", "ivf_pq",
                   "ivf_pq_fs"] = "ivf_flat"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    nlist: int = Field(default=1024, ge=1)
    nprobe: int = Field(default=32, ge=1)
    # IVF coarse quantizer: "flat" compares a vector with every centroid; "hnsw" walks an HNSW
    # graph over the centroids. At thousands of lists the graph assigns the 1M adds of a
    # rebuild several times faster (measured: ~5 s vs ~25 s at nlist 4096 on 2 cores); for a
    # large batch of queries the flat one's single matrix product can be as fast or faster.
    quantizer: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = Field(default=32, ge=4)
    # Graph build effort (HNSW index and HNSW quantizer): higher is slower to build, better recall.
    ef_construction: int = Field(default=40, ge=1)
    ef_search: int = Field(default=128, ge=1)
    pq_m: int = Field(default=16, ge=1)
    # IVF-PQ / IVF-SQ8 scores are coarse: search refine_factor × as many candidates, then
    # re-score them against the bank (needs rerank).
    refine_factor: int = Field(default=4, ge=1)
    # Re-score candidates against the bank's current keys (exact, cheap: B × candidates × D);
    # this also corrects for index entries that are older than the bank.
    rerank: bool = True
    num_threads: int | None = Field(default=None, ge=1)
    layout: Layout = "replicated"
    num_negatives: int = Field(default=64, ge=1)
    # Extra candidates searched so that dropping the anchor, its positive (and, with
    # filter_same_label, same-label entries) still leaves num_negatives.
    extra: int = Field(default=16, ge=0)
    # Sample num_negatives from the filtered ranks [lo, hi) instead of taking the nearest:
    # skipping the very nearest avoids most false negatives.
    rank_window: tuple[int, int] | None = None
    # Drop candidates that share the anchor's label. Off by default: training is
    # self-supervised and labels are for evaluation only, so filtering by them would leak
    # labels into training. Turn on only for supervised use. The metric
    # miner/same_label_fraction (share of mined negatives with the anchor's label, i.e. likely
    # false negatives) is reported whenever labels are known, whatever this setting.
    filter_same_label: bool = False
    # Incremental refresh of the entries whose keys changed, every refresh_every steps.
    refresh_every: int = Field(default=1, ge=1)
    # Full rebuild (IVF centroids retrained) every rebuild_every steps.
    rebuild_every: int = Field(default=1000, ge=1)
    # Also rebuild as soon as the searches' slowdown since the last build (the encoder's keys
    # crowding into a few IVF lists) has cost as much time as that build: rent-or-buy, see
    # dist_contrast/negatives/miner.py. Early in training, when the encoder moves fast, this
    # rebuilds often; later, rarely. rebuild_every stays the longest interval.
    adaptive_rebuild: bool = False
    # Training sample for IVF centroids: nlist × train_per_list vectors (or the whole bank).
    # k-means costs sample × nlist per iteration: at nlist 4096, 64 per list took 15 s per
    # rebuild on one core, 16 per list 4.6 s (moco_mined.yaml uses 8, with 2 warm iterations).
    train_per_list: int = Field(default=64, ge=1)
    # k-means iterations of a rebuild after the first: the centroids start from the previous
    # ones (the keys drift slowly between rebuilds), so a few iterations suffice. The first
    # build runs faiss's default 10 from a random start.
    retrain_iterations: int = Field(default=4, ge=1)

    @property
    def removes_in_place(self) -> bool:
        """Whether a refresh can replace entries (HNSW and fast scan rebuild instead)."""
        return self.index not in ("hnsw", "ivf_pq_fs")

    @property
    def coarse_scores(self) -> bool:
        """Whether the index's scores are quantised (refine_factor × candidates are searched)."""
        return self.index in ("ivf_pq", "ivf_sq8", "ivf_pq_fs")

    @property
    def gpu_capable(self) -> bool:
        """Whether FAISS-GPU has this index type."""
        return self.index not in ("hnsw", "ivf_pq_fs")

    @model_validator(mode="after")
    def _check(self) -> MinerConfig:
        if self.index.startswith("ivf") and self.nprobe > self.nlist:
            raise ValueError(
                f"negatives.miner.nprobe={self.nprobe} exceeds nlist={self.nlist}; "
                "probe at most every list"
            )
        if self.rank_window is not None:
            lo, hi = self.rank_window
            if lo < 0 or hi <= lo:
                raise ValueError(
                    f"negatives.miner.rank_window={list(self.rank_window)} must be [lo, hi) "
                    "with 0 <= lo < hi"
                )
            if hi - lo < self.num_negatives:
                raise ValueError(
                    f"negatives.miner.rank_window={list(self.rank_window)} holds {hi - lo} ranks, "
                    f"fewer than num_negatives={self.num_negatives}; widen it"
                )
        if self.rebuild_every < self.refresh_every:
            raise ValueError(
                f"negatives.miner.rebuild_every={self.rebuild_every} is below "
                f"refresh_every={self.refresh_every}; a rebuild is also a refresh"
            )
        return self

    @property
    def search_k(self) -> int:
        """Candidates kept per query before filtering."""
        hi = self.rank_window[1] if self.rank_window is not None else self.num_negatives
        return hi + self.extra


# ----------------------------------------------------------------------------- the source


def _build(settings: MinerConfig, context: SourceContext) -> NegativeSource:
    # Imported here: miner.py (and its index and policy) read MinerConfig from this module.
    from dist_contrast.negatives.miner import FaissMiner

    # The index is over the memory bank (``requires``): built after it, updated after it.
    bank = context.built[BANK]
    return FaissMiner(settings, bank, rank=context.rank, world_size=context.world_size,
                      seed=context.seed + context.rank)


def index_bytes_per_key(miner: MinerConfig, dim: int) -> int:
    """FAISS memory per indexed key of ``miner.index`` at embedding dim ``dim`` (closed form).

    Codes: exact, ivf_flat and hnsw 4·D; ivf_fp16 2·D; ivf_sq8 D; ivf_pq ``pq_m`` (8-bit
    codes). Plus :data:`IVF_OVERHEAD` for IVF indexes, :data:`IDMAP_OVERHEAD` for the ID map
    of exact and HNSW, and HNSW's graph: 2·M level-0 links of 4 bytes plus :data:`HNSW_LEVELS`.
    """
    kind = miner.index
    if kind == "exact":
        return 4 * dim + IDMAP_OVERHEAD
    if kind == "hnsw":
        return 4 * dim + 8 * miner.hnsw_m + HNSW_LEVELS + IDMAP_OVERHEAD
    codes = {"ivf_flat": 4 * dim, "ivf_fp16": 2 * dim, "ivf_sq8": dim, "ivf_pq": miner.pq_m}
    return codes[kind] + IVF_OVERHEAD


def _memory(settings: MinerConfig, context: MemoryContext) -> list[MemoryTerm]:
    """The FAISS index, plus per key the re-rank copy (float32) and its id and flag."""
    workers, dim = context.workers, context.dim
    sharded = settings.layout == "sharded" and workers > 1
    keys = -(-context.train_size // workers) if sharded else context.train_size
    per_key = index_bytes_per_key(settings, dim) + 4 * dim + 9
    layout = f", sharded over {workers} workers" if sharded else ""
    fix = ("set negatives.miner.index to ivf_fp16, ivf_sq8 or ivf_pq (fewer bytes per key)"
           if settings.index in ("exact", "ivf_flat", "hnsw") else "use fewer training rows")
    if not sharded and workers > 1:
        fix += " or negatives.miner.layout=sharded"
    return [MemoryTerm(f"the miner's FAISS index (negatives.miner.index={settings.index}, "
                       f"{keys:,} keys{layout})", keys * per_key, fix)]


def _sharding(settings: MinerConfig, loss: LossNeeds) -> tuple[str, MinerConfig] | None:
    if settings.layout != "replicated":
        return None
    return "negatives.miner.layout=sharded", settings.model_copy(update={"layout": "sharded"})


register_source(NAME, SourceSpec(
    key=KEY, build=_build, requires=(BANK,), settings=MinerConfig,
    title="mined hard negatives", memory=_memory,
    describe=lambda settings, context: (f"mined ({settings.num_negatives} hard negatives per "
                                        f"query, {settings.index})"),
    per_query=lambda settings, context: (settings.num_negatives, "negatives.miner.num_negatives"),
    sharding=_sharding,
))
