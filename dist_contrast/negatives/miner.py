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

Refresh policy. After every ``update`` the ids whose bank entries changed are marked dirty.
Every ``refresh_every`` steps the dirty entries are re-indexed in place (``remove_ids`` +
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
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np
import torch
from torch import Tensor

from dist_contrast.negatives.bank import MemoryBank
from dist_contrast.negatives.base import Negatives
from dist_contrast.negatives.config import MinerConfig
from dist_contrast.negatives.index import (
    SearchIndex,
    as_ivf,
    build_index,
    imbalance,
    ivf_centroids,
    remove_ids,
    resolve_device,
)


def shard_range(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous id range [lo, hi) that rank ``rank`` indexes (sizes differ by ≤ 1)."""
    return size * rank // world_size, size * (rank + 1) // world_size


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
        self.device = resolve_device(cfg.device)
        if cfg.num_threads is not None:
            # Ray pins a worker to a few cores; FAISS would otherwise start one thread per core
            # of the machine and oversubscribe them.
            faiss.omp_set_num_threads(cfg.num_threads)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        rows = self.hi - self.lo
        self.index: SearchIndex | None = None
        self.dirty = torch.zeros(rows, dtype=torch.bool)
        # Step each entry was (re)written into the index; -1 = not in the index.
        self.indexed_at = torch.full((rows,), -1, dtype=torch.long)
        self.indexed_rows = 0  # entries in the index
        self.new_rows = 0  # dirty entries not yet in the index (first writes)
        self.built_rows = 0  # entries at the last rebuild (the doubling rule)
        self._indexed_sum = 0  # sum of indexed_at over the index, for the mean age
        self._oldest = -1  # min of indexed_at over the index
        # All the miner's time (search, selection, update, refresh, rebuild) since it was made:
        # the trainer differences it over its log window (miner/time_share).
        self.total_seconds = 0.0
        self._stale = True  # (re)build from the bank at the next search: new or just loaded
        # Adaptive rebuild (see _count_drift): the last build's seconds, the fewest entries a
        # search scanned per query since then and the fastest seconds per scanned entry, and
        # the seconds the searches spent scanning more than that (what drift has cost).
        self._build_seconds = 0.0
        self._lists = 1  # IVF lists of the current index
        self._full_lists = 1  # lists once the written entries fill them (cfg.nlist for IVF)
        self._fewest = self._per_entry = float("inf")
        self._drift_seconds = 0.0
        self.step = 0
        self.refresh_step = -1
        self.rebuild_step = -1
        self.rebuilds = 0
        self._pending_seconds = 0.0  # refresh/rebuild time since the last metrics
        self._reported_seconds = 0.0  # total_seconds at the last metrics

    # ------------------------------------------------------------------ index maintenance

    @property
    def candidates(self) -> int:
        """Candidates searched per query (more for IVF-PQ/SQ8, whose scores are coarse)."""
        coarse = self.cfg.index in ("ivf_pq", "ivf_sq8")
        factor = self.cfg.refine_factor if coarse and self.cfg.rerank else 1
        return self.cfg.search_k * factor

    def _vectors(self, positions: Tensor | None = None) -> np.ndarray:
        shard = self.bank.vectors[self.lo : self.hi]
        rows = shard if positions is None else shard[positions.to(shard.device)]
        return rows.detach().to("cpu", torch.float32).numpy()

    def rebuild(self, step: int) -> None:
        """Build the index from the bank shard's written entries (IVF centroids retrained on
        them, warm-started from the previous ones, topped up when the index has grown)."""
        start = time.perf_counter()
        written = (self.bank.write_step[self.lo : self.hi] >= 0).to("cpu")
        positions = written.nonzero().flatten()
        previous = ivf_centroids(self.index.cpu) if self.index is not None else None
        self.index = None  # free the old index before the new one fills: one index at a time
        self.indexed_at.fill_(-1)
        self.dirty.zero_()
        rows = positions.numel()
        if rows > 0:
            sample = min(rows, max(256, self.cfg.nlist * self.cfg.train_per_list))
            generator = torch.Generator().manual_seed(self.seed + 7919 * (self.rebuilds + 1))
            train_rows = positions[torch.randperm(rows, generator=generator)[:sample]]
            cpu_index = build_index(
                self.cfg,
                self.bank.dim,
                self._vectors(train_rows),
                centroids=previous,
                seed=self.seed + self.rebuilds,
            )
            ids = (positions + self.lo).numpy().astype(np.int64)
            cpu_index.add_with_ids(self._vectors(positions), ids)
            self.index = SearchIndex(cpu_index, self.device, self.cfg.index)
            self.indexed_at[positions] = step
            ivf = as_ivf(cpu_index)
            self._lists = int(ivf.nlist) if ivf is not None else 1
            self._full_lists = self.cfg.nlist if ivf is not None else 1
        self.indexed_rows = self.built_rows = rows
        self.new_rows = 0
        self._indexed_sum, self._oldest = rows * step, step
        self.refresh_step = step
        self.rebuild_step = step
        self.rebuilds += 1
        self._stale = False
        self._build_seconds = time.perf_counter() - start
        self._fewest = self._per_entry = float("inf")
        self._drift_seconds = 0.0
        self._spent(start)

    def refresh(self, step: int) -> None:
        """Re-index the dirty entries in place (a rebuild for HNSW, which cannot remove)."""
        if self.index is None or self.cfg.index == "hnsw":
            self.rebuild(step)
            return
        start = time.perf_counter()
        positions = self.dirty.nonzero().flatten()
        if positions.numel() > 0:
            before = self.indexed_at[positions]
            present = before >= 0
            if bool(present.any()):
                remove_ids(self.index.cpu, (positions[present] + self.lo).numpy())
            ids = (positions + self.lo).numpy().astype(np.int64)
            self.index.cpu.add_with_ids(self._vectors(positions), ids)
            self.index.sync()
            self.indexed_at[positions] = step
            self.indexed_rows += int((~present).sum())
            self._indexed_sum += step * positions.numel() - int(before[present].sum())
            if bool(present.any()) and int(before[present].min()) == self._oldest:
                # The oldest entries may all have been refreshed: find the new oldest.
                indexed = self.indexed_at >= 0
                self._oldest = int(self.indexed_at.masked_fill(~indexed, step).min())
            self.dirty.zero_()
            self.new_rows = 0
        self.refresh_step = step
        self._spent(start)

    def _spent(self, start: float) -> None:
        """Refresh/rebuild seconds since ``start``, for miner/refresh_seconds."""
        self._pending_seconds += time.perf_counter() - start

    def update(self, keys: Tensor, ids: Tensor, labels: Tensor | None, step: int) -> None:
        """Mark the changed entries dirty and refresh/rebuild on schedule.

        Call after ``MemoryBank.update`` with the same global batch.

        Shape: keys [W·B, D] (unused: the index reads the bank), ids [W·B].
        """
        start = time.perf_counter()
        self._update(ids, step)
        self.total_seconds += time.perf_counter() - start

    def _update(self, ids: Tensor, step: int) -> None:
        self.step = step
        ids = ids.detach().to("cpu")
        mine = (ids >= self.lo) & (ids < self.hi)
        positions = torch.unique(ids[mine] - self.lo)
        first = positions[(self.indexed_at[positions] < 0) & ~self.dirty[positions]]
        self.new_rows += first.numel()
        self.dirty[positions] = True
        if self.index is None and self.indexed_rows == 0 and self.new_rows == 0:
            return
        doubled = self.indexed_rows + self.new_rows >= 2 * self.built_rows
        if self.index is None or (doubled and self._lists < self._full_lists):
            self.rebuild(step)  # the written entries doubled: more lists, fitted to them
        elif step - self.rebuild_step >= self.cfg.rebuild_every:
            self.rebuild(step)
        elif self.cfg.adaptive_rebuild and self._drift_seconds >= self._build_seconds:
            self.rebuild(step)  # the drift's slower searches have cost as much as a rebuild
        elif step - self.refresh_step >= self.cfg.refresh_every:
            self.refresh(step)

    def _ensure_index(self) -> SearchIndex | None:
        """The index, built from the bank on first use (None while nothing is written)."""
        if self._stale:
            start = time.perf_counter()
            schedule = (self.refresh_step, self.rebuild_step)
            self.rebuild(self.step)
            if schedule[1] >= 0:
                # Rebuilt after a checkpoint load: keep the saved refresh schedule.
                self.refresh_step, self.rebuild_step = schedule
            self.total_seconds += time.perf_counter() - start
        return self.index

    # ------------------------------------------------------------------ mining

    def search(self, queries: Tensor) -> tuple[Tensor, Tensor, float]:
        """Raw top-candidates of ``queries`` in this rank's index, and the seconds it took.

        Shape: queries [Q, D] -> scores [Q, C], ids [Q, C] (global ids, -1 = none).
        """
        index = self._ensure_index()
        start = time.perf_counter()
        if index is None:  # nothing written yet: no candidates
            shape = (queries.shape[0], self.candidates)
            return torch.full(shape, float("-inf")), torch.full(shape, -1, dtype=torch.long), 0.0
        queries_np = queries.detach().to("cpu", torch.float32).numpy()
        stats = faiss.cvar.indexIVF_stats  # type: ignore[attr-defined]
        stats.reset()
        scores, ids = index.search(queries_np, self.candidates)
        seconds = time.perf_counter() - start
        self.total_seconds += seconds
        self._count_drift(queries_np.shape[0], int(stats.ndis), seconds, index.ntotal)
        return torch.from_numpy(scores), torch.from_numpy(ids), seconds

    def _count_drift(self, queries: int, scanned: int, seconds: float, entries: int) -> None:
        """Add what this search's extra scanning cost to the adaptive rebuild's account.

        ``scanned`` is the number of index entries the search compared (FAISS's IVF
        statistics; 0 for exact, HNSW and GPU indexes, which this rule leaves alone). It is
        counted in lists of the average size, so that entries added since the build (lists
        that grow evenly) are not mistaken for crowding. What a search scans beyond the fewest
        lists per query since the last build is priced at the fastest seconds per entry seen
        since then. Counting entries, not timing each search, keeps a busy machine's slow
        moment from passing for drift.
        """
        if scanned <= 0 or queries <= 0 or entries <= 0:
            return
        mean_list = entries / self._lists
        lists = scanned / (queries * mean_list)
        self._fewest = min(self._fewest, lists)
        self._per_entry = min(self._per_entry, seconds / scanned)
        extra = (lists - self._fewest) * queries * mean_list
        self._drift_seconds += extra * self._per_entry

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
        start = time.perf_counter()
        device = self.bank.vectors.device
        query = query.detach().to(device, self.bank.vectors.dtype)
        ids = ids.to(device)
        cand_ids = cand_ids.to(device)
        valid = cand_ids >= 0
        safe_ids = cand_ids.clamp(min=0)
        # One gather of the candidates' current keys serves the rerank and the output.
        # index_select, not bank[ids]: measured 4.5× faster for 20k random rows of a 1M bank.
        batch, count = safe_ids.shape
        cand_vectors = self.bank.vectors.index_select(0, safe_ids.flatten())
        if self.cfg.rerank:
            cand_scores = torch.bmm(cand_vectors.view(batch, count, -1), query[:, :, None])
            cand_scores = cand_scores.squeeze(2)
        cand_scores = cand_scores.to(device).masked_fill(~valid, float("-inf"))
        cand_scores, order = cand_scores.sort(dim=1, descending=True)
        cand_ids, valid = cand_ids.gather(1, order), valid.gather(1, order)
        safe_ids = cand_ids.clamp(min=0)
        # The anchor and its positive share the dataset id (instance discrimination).
        keep = valid & (cand_ids != ids[:, None])
        if labels is not None and self.cfg.filter_same_label:
            labels = labels.to(device)
            same = (self.bank.labels[safe_ids] == labels[:, None]) & (labels[:, None] >= 0)
            keep &= ~same
        chosen, chosen_ok = self._pick(keep)
        neg_ids = cand_ids.gather(1, chosen).masked_fill(~chosen_ok, -1)
        # Rows of cand_vectors (flattened [B·C, D]) of the chosen candidates. A masked slot
        # holds some candidate's key: the loss ignores it through query_negative_mask.
        rows = order.gather(1, chosen) + count * torch.arange(batch, device=device)[:, None]
        negatives = cand_vectors.index_select(0, rows.flatten()).view(*rows.shape, -1)
        similarity = cand_scores.gather(1, chosen)
        self.total_seconds += time.perf_counter() - start
        metrics = self._metrics(labels, similarity, neg_ids, chosen_ok, search_seconds)
        return Negatives(
            query_negatives=negatives,
            query_negative_mask=~chosen_ok,
            query_negative_ids=neg_ids,
            metrics=metrics,
        )

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
        indexed = max(1, self.indexed_rows)
        metrics = {
            "miner/search_seconds": search_seconds,
            "miner/refresh_seconds": self._pending_seconds,
            "miner/seconds": self.total_seconds - self._reported_seconds,
            "miner/index_age_mean": self.step - self._indexed_sum / indexed
            if self.indexed_rows else 0.0,
            "miner/index_age_max": float(self.step - self._oldest) if self.indexed_rows else 0.0,
            "miner/steps_since_rebuild": float(self.step - self.rebuild_step),
            "miner/rebuilds": float(self.rebuilds),
            "miner/drift_seconds": self._drift_seconds,
            "miner/indexed_fraction": self.indexed_rows / max(1, self.indexed_at.numel()),
            "miner/imbalance": (imbalance(self.index.cpu) or 1.0) if self.index else 1.0,
            "miner/dirty_fraction": int(self.dirty.sum()) / max(1, self.indexed_at.numel()),
            "miner/negative_similarity": float(similarity.masked_fill(~ok, 0.0).sum() / count),
            "miner/negatives_per_query": float(ok.sum(dim=1).float().mean()),
        }
        self._pending_seconds, self._reported_seconds = 0.0, self.total_seconds
        if labels is not None:
            neg_labels = self.bank.labels[neg_ids.clamp(min=0)]
            same = (neg_labels == labels.to(neg_labels.device)[:, None]) & ok
            metrics["miner/same_label_fraction"] = float(same.sum() / count)
        return metrics

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "refresh_step": self.refresh_step,
            "rebuild_step": self.rebuild_step,
            "rebuilds": self.rebuilds,
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
        self.refresh_step = int(state["refresh_step"])
        self.rebuild_step = int(state["rebuild_step"])
        self.rebuilds = int(state["rebuilds"])
        self.generator.set_state(state["generator"])
        # The index is rebuilt from the restored bank at the next search; every entry is
        # then fresh, so nothing is dirty.
        self.index = None
        self.dirty.zero_()
        self.indexed_at.fill_(-1)
        self.indexed_rows = self.new_rows = self.built_rows = 0
        self._stale = True
