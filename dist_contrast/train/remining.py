"""Hard negatives re-mined from a corpus while training goes on (ANCE): ``negatives.corpus``.

The schedule is a function of the step alone, so that a run and its resume see the same
negatives:

* before step 1, the ``first`` candidates (none, the initial model's, or BM25's);
* at every step ``s`` that is a multiple of ``every_steps``, a refresh starts from a snapshot
  of the weights (float32, the optimiser's masters): worker 0 encodes the training queries and
  the corpus with it, in a background thread or as Ray tasks, while every worker trains on;
* at step ``s + swap_after`` the refresh's candidates swap in on every worker at once (worker
  0 broadcasts them): workers wait there if it is not done, and never see half a table.

A refresh ranks the corpus for every training row by FAISS exact inner product and keeps
``num_candidates`` per row under the rule of ``dist-contrast mine``
(:mod:`dist_contrast.retrieval.mining`): the row's positives dropped by id and by text, the
rank window, the margins. Each step, a row draws ``per_query`` of its candidates, seeded by
(seed, step, row); a row with fewer draws other rows' positives. A checkpoint holds the table
in use and a refresh under way (finished first), so a resume continues bitwise.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dist_contrast import dist
from dist_contrast.config import Config
from dist_contrast.data.corpus import read_corpus_file
from dist_contrast.data.seeding import mix_seed
from dist_contrast.errors import RunFailed, UserError
from dist_contrast.negatives.corpus import KEY, CorpusConfig
from dist_contrast.retrieval import scoring
from dist_contrast.retrieval.mining import MiningCounts, candidates_needed
from dist_contrast.train.text_model import Snapshot, build_text_encoder, embed, encode_shard

_DRAW_STREAM = 0x434F5250  # "CORP"
# The broadcast's first value when worker 0's refresh failed.
_FAILED = -1


@dataclass
class Refresh:
    """A finished refresh: each training row's candidates (corpus positions, best first; -1
    where it has fewer), the step of the weights it used, and what it measured."""

    table: np.ndarray  # [rows, num_candidates] int64
    step: int
    stats: dict[str, float] = field(default_factory=dict)


class CorpusMiner:
    """One worker's side of the re-mining: the table in use, and (worker 0) the refresh."""

    def __init__(self, settings: CorpusConfig, cfg: Config, queries: Sequence[Any],
                 positives: Sequence[Any], *, seed: int) -> None:
        if not all(isinstance(item, str) for item in (*queries, *positives)):
            raise UserError(f"negatives.{KEY} mines texts, but a side of data.path holds "
                            "numeric feature rows; drop 'corpus' from negatives.sources")
        self.settings, self.cfg, self.seed = settings, cfg, seed
        self.rows = scoring.MiningQueries.of_rows(queries, positives)
        if settings.file is not None:
            documents, _ = read_corpus_file(settings.file)
            self.corpus = scoring.Corpus.with_positives(documents, self.rows.positive,
                                                        from_pairs=False)
        else:
            self.corpus = scoring.Corpus.with_positives(
                list(dict.fromkeys(self.rows.positive)), [], from_pairs=True)
        self.positive_at = np.array([self.corpus.position[text] for text in self.rows.positive])
        self.table = np.full((len(self.rows), 0), -1, dtype=np.int64)
        self.table_step: int | None = None  # the weights' step of the table in use
        self.stats: dict[str, float] = {}
        self.pending: Future[Refresh] | None = None  # worker 0 only
        self.pending_step: int | None = None
        self.swap_at: int | None = None
        self.waited = 0.0
        # Ray tasks when asked for and on Ray (a run outside Ray encodes in the thread).
        # (the driver checked that the cluster has their CPUs beside the training workers).
        self.on_ray = bool(settings.workers) and _ray_running()

    # ------------------------------------------------------------------ the schedule

    def before_step(self, step: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Run the schedule at the boundary before step ``step + 1`` (every worker calls it;
        ``snapshot`` is collective under ZeRO: it gives the encoder's float32 state)."""
        settings = self.settings
        if step == 0 and self.table_step is None and settings.first != "none":
            if settings.first == "bm25":
                self._start(lambda: self._mine(scoring.BM25Scorer(self.rows, self.corpus), 0,
                                               time.perf_counter()))
            else:
                self._launch(snapshot(), 0)
            self.pending_step, self.swap_at = 0, 0
        if self.swap_at == step:
            self._swap()
        if step > 0 and step % settings.every_steps == 0 and self.pending_step != step:
            self._launch(snapshot(), step)
            self.pending_step, self.swap_at = step, step + settings.swap_delay
            if self.swap_at == step:
                self._swap()

    def negatives(self, indices: torch.Tensor, step: int) -> list[str]:
        """The texts of each row's ``per_query`` negatives at ``step``, row after row."""
        count, table = self.settings.per_query, self.table
        texts = self.corpus.texts
        chosen: list[str] = []
        for row in indices.tolist():
            rng = random.Random(mix_seed(self.seed, _DRAW_STREAM, step, row))
            candidates = [int(c) for c in table[row] if c >= 0]
            picked = rng.sample(candidates, min(count, len(candidates)))
            own = self.rows.positive[row]
            while len(picked) < count:  # another row's positive, as without mined ones
                other = int(self.positive_at[rng.randrange(len(self.rows))])
                if texts[other] != own:
                    picked.append(other)
            chosen.extend(texts[c] for c in picked)
        return chosen

    def metrics(self, step: int) -> dict[str, float]:
        """``corpus/*``: the age of the table in use in steps, the wait for the last swap, and
        what the refresh that made it measured."""
        if self.table_step is None:
            return {}
        return {f"{KEY}/index_age": float(step - self.table_step),
                f"{KEY}/wait_seconds": self.waited, **self.stats}

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The table in use and a refresh under way (worker 0 waits for it to finish)."""
        pending = None
        if self.pending is not None:
            refresh = self.pending.result()
            pending = {"table": torch.from_numpy(refresh.table), "step": refresh.step,
                       "stats": dict(refresh.stats)}
        return {"table": torch.from_numpy(self.table.copy()), "table_step": self.table_step,
                "stats": dict(self.stats), "pending_step": self.pending_step,
                "swap_at": self.swap_at, "pending": pending, "rows": len(self.rows),
                "documents": self.corpus.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rows"] != len(self.rows) or state["documents"] != self.corpus.size:
            raise UserError(
                f"the checkpoint's negatives.{KEY} table is for {state['rows']:,} rows and "
                f"{state['documents']:,} documents, this run has {len(self.rows):,} and "
                f"{self.corpus.size:,}; resume with the same data and corpus, or start fresh")
        self.table = state["table"].numpy().astype(np.int64)
        self.table_step, self.stats = state["table_step"], dict(state["stats"])
        self.pending_step, self.swap_at = state["pending_step"], state["swap_at"]
        self.pending = None
        if state["pending"] is not None and dist.is_rank_zero():
            future: Future[Refresh] = Future()
            future.set_result(Refresh(state["pending"]["table"].numpy().astype(np.int64),
                                      state["pending"]["step"], dict(state["pending"]["stats"])))
            self.pending = future

    # ------------------------------------------------------------------ worker 0's refresh

    def _launch(self, state: dict[str, Any], step: int) -> None:
        """Start a refresh from ``state`` (worker 0; the others only keep the schedule). The
        encoder is rebuilt here, on the training thread: building moves no RNG of the run
        (fork_rng), but only if nothing else draws meanwhile."""
        if not dist.is_rank_zero():
            return
        snapshot: Snapshot = (self.cfg.model_dump(mode="json"), state)
        encoder = None if self.on_ray else build_text_encoder(self.cfg, state)
        self._start(lambda: self._refresh(snapshot, encoder, step))

    def _start(self, work: Callable[[], Refresh]) -> None:
        if not dist.is_rank_zero():
            return
        future: Future[Refresh] = Future()

        def run() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # handed to the swap, which reports it
                future.set_exception(exc)

        threading.Thread(target=run, name="corpus-refresh", daemon=True).start()
        self.pending = future

    def _refresh(self, snapshot: Snapshot, encoder: Any, step: int) -> Refresh:
        start = time.perf_counter()
        queries = self._encode(snapshot, encoder, "query", self.rows.queries, step)
        documents = self._encode(snapshot, encoder, "document", self.corpus.texts, step)
        scorer = scoring.DenseScorer(self.rows, self.corpus, queries, documents)
        refresh = self._mine(scorer, step, start)
        size = self.settings.shard_size
        shards = -(-len(self.rows.queries) // size) - (-len(self.corpus.texts) // size)
        refresh.stats[f"{KEY}/ray_tasks"] = float(shards if encoder is None else 0)
        return refresh

    def _encode(self, snapshot: Snapshot, encoder: Any, side: str, texts: list[str],
                step: int) -> np.ndarray:
        size, batch = self.settings.shard_size, self.settings.batch_size
        shards = [texts[i : i + size] for i in range(0, len(texts), size)]
        if encoder is not None:
            with torch.inference_mode():
                return np.concatenate([embed(encoder, shard, side, batch_size=batch)
                                       for shard in shards])
        return np.concatenate(self._ray_map(snapshot, side, shards, f"step-{step}"))

    def _ray_map(self, snapshot: Snapshot, side: str, shards: list[list[str]],
                 key: str) -> list[np.ndarray]:
        """Each shard encoded by a Ray task, ``workers`` in flight; results in shard order."""
        import ray

        task = ray.remote(num_cpus=self.settings.cpus_per_task, max_retries=1)(encode_shard)
        shared = ray.put(snapshot)
        results: list[np.ndarray | None] = [None] * len(shards)
        waiting = list(range(len(shards)))
        pending: dict[Any, int] = {}
        while waiting or pending:
            while waiting and len(pending) < self.settings.workers:
                number = waiting.pop(0)
                pending[task.remote(shared, side, shards[number], self.settings.batch_size,
                                    key)] = number
            ready, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(ready[0])] = ray.get(ready[0])
        return [array for array in results if array is not None]

    @functools.cached_property
    def _positives(self) -> tuple[list[frozenset[int]], list[frozenset[str]]]:
        """Each row's positives by corpus position and by text key (the same every refresh;
        worker 0 only, on its first)."""
        return scoring.positives_of(self.rows, self.corpus)

    def _mine(self, scorer: scoring.Scorer, step: int, start: float) -> Refresh:
        rule = self.settings.rule(seed=mix_seed(self.seed, step))
        positive_ids, positive_keys = self._positives
        most = max(len(i) + len(k) for i, k in zip(positive_ids, positive_keys, strict=True))
        k = min(self.corpus.size, candidates_needed(rule, most, self.corpus.repeated))
        table = np.full((len(self.rows), rule.num_negatives), -1, dtype=np.int64)
        counts, negative_sum, positive_sum = MiningCounts(), 0.0, 0.0
        for begin in range(0, len(self.rows), self.settings.shard_size):
            block = range(begin, min(begin + self.settings.shard_size, len(self.rows)))
            mined = scoring.mine_block(scorer, block, k, rule, positive_ids=positive_ids,
                                       positive_keys=positive_keys, keys=self.corpus.keys)
            for row, picked in zip(block, mined.negatives, strict=True):
                table[row, : len(picked)] = picked
            counts.add(mined.counts)
            negative_sum += sum(sum(scores) for scores in mined.scores)
            positive_sum += sum(mined.positive_scores)
        rows = max(1, counts.queries)
        stats = {
            f"{KEY}/negative_similarity": negative_sum / max(1, counts.kept),
            f"{KEY}/positive_similarity": positive_sum / rows,
            f"{KEY}/removed_as_positive": (counts.positive_id + counts.positive_text) / rows,
            f"{KEY}/removed_by_margin": counts.margin / rows,
            f"{KEY}/short_rows": counts.short / rows,
            f"{KEY}/refresh_seconds": time.perf_counter() - start,
        }
        return Refresh(table, step, stats)

    def _swap(self) -> None:
        """Every worker takes worker 0's finished refresh, at the same step boundary."""
        begin = time.perf_counter()
        shape = torch.zeros(3, dtype=torch.int64)
        refresh = None
        error: BaseException | None = None
        if dist.is_rank_zero():
            assert self.pending is not None
            try:
                refresh = self.pending.result()
                shape[:] = torch.tensor([*refresh.table.shape, refresh.step])
            except BaseException as exc:
                error, shape[0] = exc, _FAILED
        dist.broadcast(shape)
        if int(shape[0]) == _FAILED:
            if isinstance(error, UserError):
                raise UserError(str(error)) from None
            reason = f": {type(error).__name__}: {error}" if error is not None else ""
            raise RunFailed(f"the negatives.{KEY} refresh failed on worker 0{reason}; see the "
                            "worker's log") from None
        table = (torch.from_numpy(refresh.table) if refresh is not None
                 else torch.empty(int(shape[0]), int(shape[1]), dtype=torch.int64))
        dist.broadcast(table)
        self.table, self.table_step = table.numpy(), int(shape[2])
        self.stats = dict(refresh.stats) if refresh is not None else {}
        self.pending, self.swap_at = None, None
        self.waited = time.perf_counter() - begin


def _ray_running() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return bool(ray.is_initialized())


def build_corpus_miner(cfg: Config, train: Any) -> CorpusMiner | None:
    """The re-miner of ``negatives.corpus`` over the training rows (None when not configured)."""
    from dist_contrast.negatives.corpus import NAME

    if NAME not in cfg.negatives.sources:
        return None
    rows = train.rows
    return CorpusMiner(cfg.negatives.settings_of(NAME), cfg, rows.query, rows.positive,
                       seed=cfg.experiment.seed)
