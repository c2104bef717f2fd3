"""The ``negatives:`` section of the experiment config: which pools feed the loss, and how.

Nested by the top-level :class:`dist_contrast.config.Config`. Every field has a range or a
closed set of choices; combinations that cannot work (a queue without the momentum encoder,
mining without a bank to index) are rejected here with a message that names the key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dist_contrast.negatives.registry import source_names, source_spec
from dist_contrast.section import Section

Layout = Literal["replicated", "sharded"]


class QueueConfig(Section):
    """MoCo's FIFO of the newest ``size`` keys (any size; it need not divide the batch)."""

    size: int = Field(default=65536, ge=1)
    # replicated: every worker holds the whole queue. sharded: worker r holds the global slots
    # s with s % W == r (~size/W rows); the loss then needs the collective sharded LSE.
    layout: Layout = "replicated"
    # An instance seen in an earlier epoch may still sit in the queue; its key is a positive,
    # not a negative, so it is masked out of the query's denominator.
    mask_same_instance: bool = True


class BankConfig(Section):
    """InstDisc's memory bank: one normalised key per dataset instance."""

    # 0 replaces an entry with the newest key; m > 0 keeps m·old + (1-m)·new, re-normalised.
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    # m noise entries drawn uniformly per datum for the NCE loss.
    noise_samples: int = Field(default=4096, ge=1)
    # λ of the proximal regulariser λ‖f_i − v_i‖² (0 = off); the trainer adds the term.
    proximal: float = Field(default=0.0, ge=0.0)
    # NCE's normaliser Z: 0 estimates it once, at the first step, and keeps it (InstDisc);
    # k > 0 estimates it again every k steps (e.g. once an epoch), for runs where the bank's
    # features change a lot: Z frozen against the random initial bank ends up orders of
    # magnitude too small.
    normalizer_every: int = Field(default=0, ge=0)
    # Use the whole bank as the shared pool of an InfoNCE loss (non-parametric softmax with an
    # exact denominator). Only sensible for small datasets: the pool is [n, D] per step.
    as_pool: bool = False


class MinerConfig(Section):
    """FAISS hard-negative miner over the bank's keys."""

    # ivf_fp16 stores each key as float16: half the bytes of ivf_flat to scan (measured ~1.6×
    # faster search at 1M keys), with scores accurate to ~1e-3, enough to keep the candidate
    # set (measured: the same recall@64 as ivf_flat); rerank then orders them exactly.
    # ivf_sq8 stores each key as 8-bit scalars (4× less memory to scan than ivf_flat); its
    # scores are coarse, so it searches refine_factor × the candidates and re-scores them
    # exactly, like ivf_pq.
    index: Literal["exact", "ivf_flat", "ivf_fp16", "ivf_sq8", "hnsw", "ivf_pq"] = "ivf_flat"
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


class NegativesConfig(Section):
    """Which negative pools feed the loss (any combination) and their settings."""

    # Any registered source (negatives/registry.py): batch, queue, bank, mined by default.
    sources: list[str] = Field(default_factory=lambda: ["batch"])
    # MoCo key encoder θ_k ← m·θ_k + (1 − m)·θ_q; required by the queue.
    momentum_encoder: bool = False
    momentum: float = Field(default=0.999, ge=0.0, lt=1.0)
    # Shuffle the batch across workers before the key encoder so BatchNorm cannot leak the
    # positive (MoCo); needs the momentum encoder.
    shuffle_bn: bool = False
    queue: QueueConfig = QueueConfig()
    bank: BankConfig = BankConfig()
    miner: MinerConfig = MinerConfig()

    @model_validator(mode="after")
    def _check(self) -> NegativesConfig:
        sources = self.sources
        if not sources:
            raise ValueError(
                f"negatives.sources is empty; list at least one of {', '.join(source_names())}"
            )
        if len(set(sources)) != len(sources):
            raise ValueError(f"negatives.sources={list(sources)} repeats a source; list each once")
        for name in sources:
            for needed in source_spec(name).requires:
                if needed not in sources:
                    raise ValueError(
                        f"negatives.sources has {name!r} but not {needed!r}, which it is built "
                        f"on; add '{needed}'"
                    )
        if "queue" in sources and not self.momentum_encoder:
            raise ValueError(
                "negatives.sources has 'queue' but negatives.momentum_encoder is false; the queue "
                "holds momentum-encoder keys, set negatives.momentum_encoder=true"
            )
        if self.shuffle_bn and not self.momentum_encoder:
            raise ValueError(
                "negatives.shuffle_bn=true shuffles the key encoder's batch; "
                "set negatives.momentum_encoder=true"
            )
        if self.bank.as_pool and "queue" in sources:
            raise ValueError(
                "negatives.bank.as_pool=true and 'queue' both give the shared pool; keep one"
            )
        if self.bank.as_pool and "bank" not in sources:
            raise ValueError("negatives.bank.as_pool=true needs 'bank' in negatives.sources")
        return self
