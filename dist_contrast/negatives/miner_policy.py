"""When the miner refreshes or rebuilds its index: a pure function of a few counters.

No FAISS, no torch, no clock here. The miner measures (entries written, entries in the index,
FAISS scan counts, seconds) and records them in a :class:`MinerCounters` through its
transitions (``marked``, ``rebuilt``, ``refreshed``, ``charged``); :func:`decide` reads the
counters and the config and says what to do after an update. The rules, first match wins:

1. No index yet: build one as soon as an entry is written.
2. Doubling: while the IVF index has fewer lists than ``nlist`` (too few written entries at
   the last build for 8 per list), rebuild whenever the entries have doubled since that
   build, so the centroids and the list count follow the keys from the first steps on.
3. ``rebuild_every`` steps since the last rebuild.
4. Adaptive rent-or-buy (``adaptive_rebuild``): once the searches' extra scanning since the
   last build (the drift's cost, see :meth:`MinerCounters.charged`) has cost as much as that
   build took, rebuild.
5. ``refresh_every`` steps since the last refresh: re-index the changed entries.

See :mod:`dist_contrast.negatives.miner` for why each rule exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from dist_contrast.negatives.mined import MinerConfig

Action = Literal["none", "refresh", "rebuild"]
Reason = Literal["empty", "first", "doubled", "rebuild_every", "drift", "refresh_every", "not_due"]


@dataclass(frozen=True)
class Decision:
    """What to do after an update, and which rule said so."""

    action: Action
    reason: Reason


@dataclass(frozen=True)
class Scan:
    """One search as FAISS counted it: ``scanned`` index entries compared for ``queries``
    queries in ``seconds``, against an index of ``entries`` entries."""

    queries: int
    scanned: int
    seconds: float
    entries: int


@dataclass(frozen=True)
class MinerCounters:
    """The numbers the policy reads; each transition returns a new record."""

    indexed: int = 0  # entries in the index (0: there is no index)
    pending: int = 0  # entries written for the first time, not yet in the index
    built: int = 0  # entries at the last build (the doubling rule)
    lists: int = 1  # IVF lists of the index (1 for other kinds)
    rebuild_step: int = -1
    refresh_step: int = -1
    rebuilds: int = 0
    # Adaptive rule: the last build's seconds; since that build, the fewest lists a search
    # scanned per query, the fastest seconds per scanned entry, and the seconds the searches
    # spent scanning more than the fewest (what the drift has cost).
    build_seconds: float = 0.0
    fewest: float = math.inf
    per_entry: float = math.inf
    drift_seconds: float = 0.0

    def marked(self, first: int) -> MinerCounters:
        """``first`` entries were written for the first time (not indexed, not yet dirty)."""
        return replace(self, pending=self.pending + first)

    def rebuilt(
        self, step: int, *, rows: int, lists: int, seconds: float, resume: bool = False
    ) -> MinerCounters:
        """The index was built at ``step`` from ``rows`` entries in ``lists`` lists.

        ``resume``: a build that restores the index after a checkpoint load keeps the saved
        refresh/rebuild schedule (if there was one) instead of starting a new one.
        """
        keep = resume and self.rebuild_step >= 0
        return MinerCounters(
            indexed=rows,
            built=rows,
            lists=lists,
            rebuild_step=self.rebuild_step if keep else step,
            refresh_step=self.refresh_step if keep else step,
            rebuilds=self.rebuilds + 1,
            build_seconds=seconds,
        )

    def refreshed(self, step: int, *, added: int) -> MinerCounters:
        """The dirty entries were re-indexed at ``step``; ``added`` of them were new."""
        return replace(self, indexed=self.indexed + added, pending=0, refresh_step=step)

    def charged(self, scan: Scan) -> MinerCounters:
        """Add what this search's extra scanning cost to the adaptive rule's account.

        ``scan.scanned`` is 0 for exact, HNSW and GPU indexes (FAISS counts IVF scans only),
        which this rule leaves alone. The scan is counted in lists of the average size, so
        that entries added since the build (lists that grow evenly) are not mistaken for
        crowding. What a search scans beyond the fewest lists per query since the last build
        is priced at the fastest seconds per entry seen since then. Counting entries, not
        timing each search, keeps a busy machine's slow moment from passing for drift.
        """
        if scan.scanned <= 0 or scan.queries <= 0 or scan.entries <= 0:
            return self
        mean_list = scan.entries / self.lists
        lists = scan.scanned / (scan.queries * mean_list)
        fewest = min(self.fewest, lists)
        per_entry = min(self.per_entry, scan.seconds / scan.scanned)
        extra = (lists - fewest) * scan.queries * mean_list
        drift = self.drift_seconds + extra * per_entry
        return replace(self, fewest=fewest, per_entry=per_entry, drift_seconds=drift)


def decide(counters: MinerCounters, cfg: MinerConfig, step: int) -> Decision:
    """What to do after the update of ``step`` (the module docstring lists the rules)."""
    c = counters
    if c.indexed == 0:
        return Decision("rebuild", "first") if c.pending > 0 else Decision("none", "empty")
    growing = cfg.index.startswith("ivf") and c.lists < cfg.nlist
    if growing and c.indexed + c.pending >= 2 * c.built:
        return Decision("rebuild", "doubled")
    if step - c.rebuild_step >= cfg.rebuild_every:
        return Decision("rebuild", "rebuild_every")
    if cfg.adaptive_rebuild and c.drift_seconds >= c.build_seconds:
        return Decision("rebuild", "drift")
    if step - c.refresh_step >= cfg.refresh_every:
        return Decision("refresh", "refresh_every")
    return Decision("none", "not_due")
