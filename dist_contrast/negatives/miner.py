"""Hard-negative mining: a FAISS index over the memory bank, refreshed as the bank changes.

What is indexed: the bank entries that hold a key, i.e. that some update has written. The
random initial entries are not samples' keys, and their spread over the sphere would train
IVF centroids on noise: once the trained keys concentrate in a small region they would crowd
into a few lists and every search would scan those (measured at 1M keys: search time grew 4×
in 1,000 steps, and a rebuild on a half-random bank made it 13×). Until the written entries
have enough keys for ``nlist`` lists (8 per list), the index is also rebuilt whenever they
have doubled since the last build, with lists in proportion, so the centroids follow the keys
from the first steps on (these geometric rebuilds are small: together about one build of
the final size).

Refresh policy (the rules themselves: :func:`dist_contrast.negatives.miner_policy.decide`).
After every ``update`` the ids whose bank entries changed are marked dirty. Every
``refresh_every`` steps the dirty entries are re-indexed in place (``remove_ids`` +
``add_with_ids``; IVF keeps its centroids), and every ``rebuild_every`` steps the index is
rebuilt from the written entries (IVF centroids retrained on the current keys, so the lists
follow the encoder's drift; k-means starts from the previous centroids and runs
``retrain_iterations``, which keeps a rebuild cheap enough to amortise). HNSW graphs cannot
remove entries, so for ``hnsw`` every refresh is a full rebuild: use a larger
``refresh_every`` with HNSW. Staleness is measured per entry as the steps since it was
(re)written into the index.

Adaptive rebuild (``adaptive_rebuild``). As the encoder moves, its new keys crowd into a few
of the lists fitted to older keys, and every search scans those: the search slows down
between rebuilds (measured at 1M keys: 10 ms right after a build, 90-430 ms a few hundred
steps later, faster while the encoder moves fast). A fixed ``rebuild_every`` is either too
rare early in training or wasteful late. The adaptive rule pays for a rebuild when the
drift has already cost as much: the index entries each search scanned beyond the fewest
per query since the last build are priced in seconds and summed, and once they reach the
last rebuild's own seconds the index is rebuilt. This is the rent-or-buy rule: whatever the
drift, the time lost to slow searches plus rebuilds stays within about twice the best
schedule in hindsight.

Candidates are re-scored against the bank's *current* keys (``rerank``), so a stale index
entry can only cost recall, never mis-rank what is returned. The index is not checkpointed:
``load_state_dict`` restores the schedule and the index is rebuilt from the (restored) bank
at the next search.

Layout. ``replicated``: every rank indexes the whole bank and searches its own queries.
``sharded``: rank r indexes the id range [r·n/W, (r+1)·n/W) and searches every rank's
queries; ``collective.mine_sharded`` gathers the queries and merges the top-k across ranks.

Structure. :class:`FaissMiner` measures, asks the policy (a pure function of
:class:`~dist_contrast.negatives.miner_policy.MinerCounters`), then acts. The FAISS upkeep
(build, in-place refresh, search, dirty entries and their ages) is :class:`ShardIndex`; the
time accounting behind the ``miner/*seconds`` metrics is :class:`MinerClock`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor

from dist_contrast.negatives.bank import MemoryBank
from dist_contrast.negatives.base import Negatives
from dist_contrast.negatives.index import (
    SearchIndex,
    as_ivf,
    build_index,
    imbalance,
    ivf_centroids,
    remove_ids,
    resolve_device,
)
from dist_contrast.negatives.mined import MinerConfig
from dist_contrast.negatives.miner_policy import Decision, MinerCounters, Scan, decide


def shard_range(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous id range [lo, hi) that rank ``rank`` indexes (sizes differ by ≤ 1)."""
    return size * rank // world_size, size * (rank + 1) // world_size


# ---------------------------------------------------------------------- time accounting


class Lap:
    """The seconds of one ``MinerClock.timing`` block (set when the block ends)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds = 0.0


class MinerClock:
    """The miner's seconds: a running total, and what the last metrics have not reported."""

    def __init__(self) -> None:
        # All the miner's time (search, selection, update, refresh, rebuild) since it was made:
        # the trainer differences it over its log window (miner/time_share).
        self.total = 0.0
        self._upkeep = 0.0  # refresh/rebuild seconds since the last report
        self._reported = 0.0  # total at the last report

    @contextmanager
    def timing(self, *, upkeep: bool = False) -> Iterator[Lap]:
        """Time the block into the total, or with ``upkeep`` into the refresh seconds (the
        update that runs the upkeep already counts it in the total)."""
        lap = Lap()
        yield lap
        lap.seconds = time.perf_counter() - lap.start
        if upkeep:
            self._upkeep += lap.seconds
        else:
            self.total += lap.seconds

    def report(self) -> dict[str, float]:
        """The upkeep's and all the miner's seconds since the last report."""
        metrics = {
            "miner/refresh_seconds": self._upkeep,
            "miner/seconds": self.total - self._reported,
        }
        self._upkeep, self._reported = 0.0, self.total
        return metrics


# ---------------------------------------------------------------------- FAISS upkeep


class ShardIndex:
    """The FAISS index over the written entries of bank rows [lo, hi), and the dirty entries.

    Mechanism only: it builds, refreshes and searches when told and reports what it did; the
    miner's policy decides when.
    """

    def __init__(self, cfg: MinerConfig, bank: MemoryBank, lo: int, hi: int, seed: int) -> None:
        self.cfg, self.bank, self.lo, self.hi, self.seed = cfg, bank, lo, hi, seed
        self.device = resolve_device(cfg.device)
        self.index: SearchIndex | None = None
        self.dirty = torch.zeros(hi - lo, dtype=torch.bool)
        # Step each entry was (re)written into the index; -1 = not in the index.
        self.indexed_at = torch.full((hi - lo,), -1, dtype=torch.long)
        self._age_sum = 0  # sum of indexed_at over the index, for the mean age
        self._oldest = -1  # min of indexed_at over the index
        self.stale = True  # (re)build from the bank before searching: new or just loaded

    def clear(self) -> None:
        """Drop the index (a checkpoint load): it is rebuilt from the restored bank before
        the next search, every entry then fresh, so nothing is dirty."""
        self.index = None
        self.dirty.zero_()
        self.indexed_at.fill_(-1)
        self.stale = True

    @property
    def lists(self) -> int:
        """IVF lists of the index (1 for other kinds or no index)."""
        ivf = as_ivf(self.index.cpu) if self.index is not None else None
        return int(ivf.nlist) if ivf is not None else 1

    def _vectors(self, positions: Tensor | None = None) -> np.ndarray:
        shard = self.bank.vectors[self.lo : self.hi]
        rows = shard if positions is None else shard[positions.to(shard.device)]
        return rows.detach().to("cpu", torch.float32).numpy()

    def mark(self, ids: Tensor) -> int:
        """Mark this shard's entries among ``ids`` dirty; returns how many of them are written
        for the first time (neither in the index nor already dirty).

        Shape: ids [N] global ids.
        """
        ids = ids.detach().to("cpu")
        mine = (ids >= self.lo) & (ids < self.hi)
        positions = torch.unique(ids[mine] - self.lo)
        first = positions[(self.indexed_at[positions] < 0) & ~self.dirty[positions]]
        self.dirty[positions] = True
        return first.numel()

    def build(self, step: int, number: int) -> int:
        """Build the index from the shard's written entries; returns how many it holds.

        ``number`` (the builds before this one) varies the training sample and k-means seed.
        """
        written = (self.bank.write_step[self.lo : self.hi] >= 0).to("cpu")
        positions = written.nonzero().flatten()
        previous = ivf_centroids(self.index.cpu) if self.index is not None else None
        self.index = None  # free the old index before the new one fills: one index at a time
        self.indexed_at.fill_(-1)
        self.dirty.zero_()
        rows = positions.numel()
        if rows > 0:
            self.index = self._fill(positions, previous, number)
            self.indexed_at[positions] = step
        self._age_sum, self._oldest = rows * step, step
        self.stale = False
        return rows

    def _fill(self, positions: Tensor, previous: np.ndarray | None, number: int) -> SearchIndex:
        """A new index of the entries at ``positions``, IVF centroids trained on a sample of
        them (warm-started from ``previous``, topped up when the index has grown).

        Shape: positions [R] shard positions, previous [L, D] or None.
        """
        rows = positions.numel()
        sample = min(rows, max(256, self.cfg.nlist * self.cfg.train_per_list))
        generator = torch.Generator().manual_seed(self.seed + 7919 * (number + 1))
        train_rows = positions[torch.randperm(rows, generator=generator)[:sample]]
        cpu_index = build_index(
            self.cfg,
            self.bank.dim,
            self._vectors(train_rows),
            centroids=previous,
            seed=self.seed + number,
        )
        ids = (positions + self.lo).numpy().astype(np.int64)
        cpu_index.add_with_ids(self._vectors(positions), ids)
        return SearchIndex(cpu_index, self.device, self.cfg.gpu_capable)

    def refresh(self, step: int) -> int:
        """Re-index the dirty entries in place; returns how many were not in the index."""
        assert self.index is not None and self.cfg.removes_in_place, "cannot remove: rebuild"
        positions = self.dirty.nonzero().flatten()
        if positions.numel() == 0:
            return 0
        before = self.indexed_at[positions]
        present = before >= 0
        if bool(present.any()):
            remove_ids(self.index.cpu, (positions[present] + self.lo).numpy())
        ids = (positions + self.lo).numpy().astype(np.int64)
        self.index.cpu.add_with_ids(self._vectors(positions), ids)
        self.index.sync()
        self.indexed_at[positions] = step
        self._age_sum += step * positions.numel() - int(before[present].sum())
        if bool(present.any()) and int(before[present].min()) == self._oldest:
            # The oldest entries may all have been refreshed: find the new oldest.
            indexed = self.indexed_at >= 0
            self._oldest = int(self.indexed_at.masked_fill(~indexed, step).min())
        self.dirty.zero_()
        return int((~present).sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Top-``k`` of ``queries`` and the index entries FAISS compared (IVF statistics; 0
        for exact, HNSW and GPU indexes).

        Shape: queries [Q, D] float32 -> scores [Q, k], ids [Q, k] int64 (-1 = none).
        """
        assert self.index is not None
        stats = faiss.cvar.indexIVF_stats  # type: ignore[attr-defined]
        stats.reset()
        scores, ids = self.index.search(queries, k)
        return scores, ids, int(stats.ndis)

    def metrics(self, step: int) -> dict[str, float]:
        """Ages (steps since each indexed entry was written into the index), the shares of
        the shard indexed and dirty, and the IVF lists' imbalance."""
        indexed = self.index.ntotal if self.index is not None else 0
        rows = max(1, self.indexed_at.numel())
        return {
            "miner/index_age_mean": step - self._age_sum / indexed if indexed else 0.0,
            "miner/index_age_max": float(step - self._oldest) if indexed else 0.0,
            "miner/indexed_fraction": indexed / rows,
            "miner/imbalance": (imbalance(self.index.cpu) or 1.0) if self.index else 1.0,
            "miner/dirty_fraction": int(self.dirty.sum()) / rows,
        }


# ---------------------------------------------------------------------- the miner


class FaissMiner:
    """Per-query hard negatives from a FAISS index over (a shard of) the memory bank."""

    def __init__(
        self,
        cfg: MinerConfig,
        bank: MemoryBank,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.bank = bank
        self.sharded = cfg.layout == "sharded" and world_size > 1
        self.lo, self.hi = (
            shard_range(bank.size, rank, world_size) if self.sharded else (0, bank.size)
        )
        if cfg.num_threads is not None:
            # Ray pins a worker to a few cores; FAISS would otherwise start one thread per core
            # of the machine and oversubscribe them.
            faiss.omp_set_num_threads(cfg.num_threads)
        self.generator = torch.Generator().manual_seed(seed)
        self.shard = ShardIndex(cfg, bank, self.lo, self.hi, seed)
        self.clock = MinerClock()
        self.counters = MinerCounters()
        self.step = 0

    @property
    def needs_every_rank(self) -> bool:
        """A sharded index searches every rank's queries: ``collective.collect_negatives``
        gathers them (``mine_sharded``), not the pool's local pass."""
        return self.sharded

    @property
    def index(self) -> SearchIndex | None:
        return self.shard.index

    @property
    def total_seconds(self) -> float:
        """All the miner's seconds since it was made (the trainer's miner/time_share)."""
        return self.clock.total

    @property
    def candidates(self) -> int:
        """Candidates searched per query (more for IVF-PQ/SQ8 and fast scan, whose scores are
        coarse)."""
        factor = self.cfg.refine_factor if self.cfg.coarse_scores and self.cfg.rerank else 1
        return self.cfg.search_k * factor

    # ------------------------------------------------------------------ index maintenance

    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        """Mark the changed entries dirty and refresh/rebuild when the policy says so.

        Call after ``MemoryBank.update`` with the same global batch.

        Shape: keys [W·B, D] (unused: the index reads the bank), ids [W·B].
        """
        with self.clock.timing():
            self.step = step
            first = self.shard.mark(ids)
            self.counters = self.counters.marked(first)
            self._act(decide(self.counters, self.cfg, step), step)

    def _act(self, decision: Decision, step: int) -> None:
        if decision.action == "rebuild":
            self.rebuild(step)
        elif decision.action == "refresh":
            self.refresh(step)

    def rebuild(self, step: int) -> None:
        """Build the index from the bank shard's written entries (IVF centroids retrained on
        them, warm-started from the previous ones, topped up when the index has grown)."""
        self._build(step, resume=False)

    def _build(self, step: int, *, resume: bool) -> None:
        with self.clock.timing(upkeep=True) as lap:
            rows = self.shard.build(step, self.counters.rebuilds)
        self.counters = self.counters.rebuilt(
            step, rows=rows, lists=self.shard.lists, seconds=lap.seconds, resume=resume
        )

    def refresh(self, step: int) -> None:
        """Re-index the dirty entries in place (a rebuild for HNSW and fast scan, which cannot
        remove)."""
        if self.shard.index is None or not self.cfg.removes_in_place:
            self.rebuild(step)
            return
        with self.clock.timing(upkeep=True):
            added = self.shard.refresh(step)
        self.counters = self.counters.refreshed(step, added=added)

    # ------------------------------------------------------------------ mining

    def search(self, queries: Tensor) -> tuple[Tensor, Tensor, float]:
        """Raw top-candidates of ``queries`` in this rank's index, and the seconds it took.

        Shape: queries [Q, D] -> scores [Q, C], ids [Q, C] (global ids, -1 = none).
        """
        if self.shard.stale:
            # First use, or just loaded: build from the bank, resuming a loaded schedule.
            with self.clock.timing():
                self._build(self.step, resume=True)
        if self.shard.index is None:  # nothing written yet: no candidates
            shape = (queries.shape[0], self.candidates)
            return torch.full(shape, float("-inf")), torch.full(shape, -1, dtype=torch.long), 0.0
        with self.clock.timing() as lap:
            queries_np = queries.detach().to("cpu", torch.float32).numpy()
            scores, ids, scanned = self.shard.search(queries_np, self.candidates)
        scan = Scan(queries_np.shape[0], scanned, lap.seconds, self.shard.index.ntotal)
        self.counters = self.counters.charged(scan)
        return torch.from_numpy(scores), torch.from_numpy(ids), lap.seconds

    def negatives(self, query: Tensor, ids: Tensor, labels: Tensor | None) -> Negatives:
        """Mine negatives for the local queries (replicated layout; sharded: see collective).

        Shape: query [B, D], ids [B], labels [B] or None -> query_negatives [B, M, D].
        """
        if self.sharded:
            raise RuntimeError(
                "a sharded miner searches every rank's queries; call "
                "collective.collect_negatives (or mine_sharded) instead of negatives()"
            )
        scores, cand_ids, seconds = self.search(query)
        return self.select(query, ids, labels, scores, cand_ids, search_seconds=seconds)

    def select(
        self,
        query: Tensor,
        ids: Tensor,
        labels: Tensor | None,
        cand_scores: Tensor,
        cand_ids: Tensor,
        *,
        search_seconds: float = 0.0,
    ) -> Negatives:
        """Filter the candidates (anchor, positive, same label) and pick M per query.

        Shape: query [B, D], ids [B], cand_scores/cand_ids [B, C] -> Negatives with
        query_negatives [B, M, D], query_negative_ids [B, M], query_negative_mask [B, M].
        """
        with self.clock.timing():
            keys, scores, ranked, order = self._ranked(query, cand_scores, cand_ids)
            chosen, ok = self._pick(self._keep(ranked, ids, labels))
            neg_ids = ranked.gather(1, chosen).masked_fill(~ok, -1)
            # Rows of keys (flattened [B·C, D]) of the chosen candidates. A masked slot holds
            # some candidate's key: the loss ignores it through query_negative_mask.
            batch, count = order.shape
            offsets = count * torch.arange(batch, device=order.device)[:, None]
            rows = order.gather(1, chosen) + offsets
            negatives = keys.index_select(0, rows.flatten()).view(*rows.shape, -1)
            similarity = scores.gather(1, chosen)
        return Negatives(
            query_negatives=negatives,
            query_negative_mask=~ok,
            query_negative_ids=neg_ids,
            metrics=self._metrics(labels, similarity, neg_ids, ok, search_seconds),
        )

    def _ranked(
        self, query: Tensor, cand_scores: Tensor, cand_ids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The candidates' current keys; their scores (exact with ``rerank``) and ids, best
        first; and the sort order (ranked column -> column of ``cand_ids``).

        Shape: query [B, D], cand_scores/cand_ids [B, C] -> keys [B·C, D] (unsorted),
        scores [B, C] (-inf = none), ids [B, C] (-1 = none), order [B, C].
        """
        device = self.bank.vectors.device
        query = query.detach().to(device, self.bank.vectors.dtype)
        cand_ids = cand_ids.to(device)
        valid = cand_ids >= 0
        # One gather of the candidates' current keys serves the rerank and the output.
        # index_select, not bank[ids]: measured 4.5× faster for 20k random rows of a 1M bank.
        batch, count = cand_ids.shape
        keys = self.bank.vectors.index_select(0, cand_ids.clamp(min=0).flatten())
        if self.cfg.rerank:
            cand_scores = torch.bmm(keys.view(batch, count, -1), query[:, :, None]).squeeze(2)
        cand_scores = cand_scores.to(device).masked_fill(~valid, float("-inf"))
        cand_scores, order = cand_scores.sort(dim=1, descending=True)
        return keys, cand_scores, cand_ids.gather(1, order), order

    def _keep(self, ranked: Tensor, ids: Tensor, labels: Tensor | None) -> Tensor:
        """Which candidates may be negatives: real ones other than the anchor and its
        positive (they share the dataset id), and with ``filter_same_label`` not of the
        anchor's label.

        Shape: ranked [B, C] (-1 = none), ids [B], labels [B] or None -> [B, C] bool.
        """
        device = ranked.device
        keep = (ranked >= 0) & (ranked != ids.to(device)[:, None])
        if labels is not None and self.cfg.filter_same_label:
            labels = labels.to(device)
            same = self.bank.labels[ranked.clamp(min=0)] == labels[:, None]
            keep &= ~(same & (labels[:, None] >= 0))
        return keep

    def _pick(self, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Column positions of the M chosen candidates per row, and which are real.

        Without a rank window: the M nearest kept candidates. With [lo, hi): M sampled
        uniformly among the kept candidates ranked lo..hi-1.
        """
        m = self.cfg.num_negatives
        rank = keep.long().cumsum(dim=1) - 1
        lo, hi = self.cfg.rank_window if self.cfg.rank_window is not None else (0, m)
        eligible = keep & (rank >= lo) & (rank < hi)
        if self.cfg.rank_window is None:
            priority = rank.float()
        else:
            priority = torch.rand(keep.shape, generator=self.generator).to(keep.device)
        priority = priority.masked_fill(~eligible, float("inf"))
        m_eff = min(m, keep.shape[1])
        values, chosen = priority.topk(m_eff, dim=1, largest=False)
        ok = torch.isfinite(values)
        if m_eff < m:  # fewer candidates than M (tiny bank): pad
            pad = m - m_eff
            chosen = torch.cat([chosen, chosen.new_zeros(chosen.shape[0], pad)], dim=1)
            ok = torch.cat([ok, ok.new_zeros(ok.shape[0], pad)], dim=1)
        return chosen, ok

    def _metrics(
        self,
        labels: Tensor | None,
        similarity: Tensor,
        neg_ids: Tensor,
        ok: Tensor,
        search_seconds: float,
    ) -> dict[str, float]:
        """Per-step miner metrics. ``similarity`` holds the chosen candidates' scores: exact
        with ``rerank``, the index's (approximate for PQ/SQ8) without. ``miner/seconds`` is
        all the miner's time since the last call: the previous update (marking, refresh,
        rebuild) and this search and selection. Ages are over the indexed entries."""
        count = ok.sum().clamp(min=1)
        metrics = {
            "miner/search_seconds": search_seconds,
            **self.clock.report(),
            **self.shard.metrics(self.step),
            "miner/steps_since_rebuild": float(self.step - self.counters.rebuild_step),
            "miner/rebuilds": float(self.counters.rebuilds),
            "miner/drift_seconds": self.counters.drift_seconds,
            "miner/negative_similarity": float(similarity.masked_fill(~ok, 0.0).sum() / count),
            "miner/negatives_per_query": float(ok.sum(dim=1).float().mean()),
        }
        if labels is not None:
            neg_labels = self.bank.labels[neg_ids.clamp(min=0)]
            same = (neg_labels == labels.to(neg_labels.device)[:, None]) & ok
            metrics["miner/same_label_fraction"] = float(same.sum() / count)
        return metrics

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "refresh_step": self.counters.refresh_step,
            "rebuild_step": self.counters.rebuild_step,
            "rebuilds": self.counters.rebuilds,
            "generator": self.generator.get_state(),
            "range": (self.lo, self.hi),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["range"]) != (self.lo, self.hi):
            raise ValueError(
                f"checkpoint miner indexed ids {tuple(state['range'])}, this worker indexes "
                f"{(self.lo, self.hi)}; resume with the same number of workers and dataset"
            )
        self.step = int(state["step"])
        self.counters = MinerCounters(
            rebuild_step=int(state["rebuild_step"]),
            refresh_step=int(state["refresh_step"]),
            rebuilds=int(state["rebuilds"]),
        )
        self.generator.set_state(state["generator"])
        self.shard.clear()  # rebuilt from the restored bank at the next search
