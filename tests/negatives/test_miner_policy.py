"""The miner's refresh/rebuild policy on plain numbers: no FAISS, no bank, no clock."""

import pytest

from dist_contrast.negatives import MinerConfig
from dist_contrast.negatives.miner_policy import Decision, MinerCounters, Scan, decide

IVF = MinerConfig(index="ivf_flat", nlist=64, nprobe=4, refresh_every=1, rebuild_every=1000)


def _built(rows: int, lists: int, step: int = 0, seconds: float = 1.0) -> MinerCounters:
    return MinerCounters().rebuilt(step, rows=rows, lists=lists, seconds=seconds)


def test_nothing_written_nothing_to_do_then_the_first_write_builds():
    assert decide(MinerCounters(), IVF, 3) == Decision("none", "empty")
    assert decide(MinerCounters().marked(5), IVF, 3) == Decision("rebuild", "first")


def test_doubling_rebuilds_while_the_ivf_lists_are_not_full():
    counters = _built(rows=50, lists=6)
    assert decide(counters.marked(49), IVF, 1).action == "refresh"
    assert decide(counters.marked(50), IVF, 1) == Decision("rebuild", "doubled")
    # All nlist lists: growing entries fill them evenly, no rebuild.
    full = _built(rows=600, lists=64)
    assert decide(full.marked(600), IVF, 1).action == "refresh"
    # Exact and HNSW indexes have no lists to grow.
    exact = MinerConfig(index="exact", refresh_every=1, rebuild_every=1000)
    assert decide(_built(rows=50, lists=1).marked(100), exact, 1).action == "refresh"


def _rebuild_steps(cfg: MinerConfig, writes_per_step: int, steps: int) -> list[int]:
    """Rebuild steps when ``writes_per_step`` new entries arrive each step; the list count of
    a build is 8 entries per list up to ``nlist`` (what the FAISS builder does)."""
    counters, rebuilt = MinerCounters(), []
    for step in range(1, steps + 1):
        counters = counters.marked(writes_per_step)
        action = decide(counters, cfg, step).action
        if action == "rebuild":
            rows = counters.indexed + counters.pending
            lists = max(1, min(cfg.nlist, rows // 8))
            counters = counters.rebuilt(step, rows=rows, lists=lists, seconds=1.0)
            rebuilt.append(step)
        elif action == "refresh":
            counters = counters.refreshed(step, added=counters.pending)
    return rebuilt


def test_doubling_rebuilds_are_geometric():
    # 50 entries a step, up to 64 lists: built at 50 entries (6 lists), rebuilt at 100, 200,
    # 400 and 800 (64 lists: full, no more doubling rebuilds).
    assert _rebuild_steps(IVF, 50, 30) == [1, 2, 4, 8, 16]
    # 4 lists are full from the first build: no doubling rebuilds.
    assert _rebuild_steps(IVF.model_copy(update={"nlist": 4}), 50, 20) == [1]


def test_rebuild_every_steps_since_the_last_rebuild():
    cfg = MinerConfig(index="ivf_flat", nlist=8, nprobe=4, refresh_every=5, rebuild_every=10)
    counters = _built(rows=800, lists=8, step=20)
    assert decide(counters, cfg, 24) == Decision("none", "not_due")
    assert decide(counters, cfg, 29) == Decision("refresh", "refresh_every")
    # Due for both: the rebuild is also a refresh.
    assert decide(counters, cfg, 30) == Decision("rebuild", "rebuild_every")


def test_refresh_cadence():
    cfg = MinerConfig(index="ivf_flat", nlist=8, nprobe=4, refresh_every=3, rebuild_every=100)
    counters = _built(rows=800, lists=8, step=10).refreshed(12, added=0)
    assert [decide(counters, cfg, step).action for step in (13, 14, 15, 16)] == [
        "none",
        "none",
        "refresh",
        "refresh",
    ]


def test_drift_is_extra_entries_scanned_priced_at_the_fastest_seconds_per_entry():
    counters = _built(rows=400, lists=4)  # lists of 100 entries on average
    # 2 lists per query, 1e-5 s per entry: the fewest so far, nothing extra.
    counters = counters.charged(Scan(queries=2, scanned=400, seconds=0.004, entries=400))
    assert (counters.fewest, counters.drift_seconds) == (2.0, 0.0)
    assert counters.per_entry == pytest.approx(1e-5)
    # 4 lists per query, slower per entry: 2 extra lists × 2 queries × 100 entries at the
    # fastest price seen (1e-5 s).
    counters = counters.charged(Scan(queries=2, scanned=800, seconds=0.016, entries=400))
    assert counters.per_entry == pytest.approx(1e-5)
    assert counters.drift_seconds == pytest.approx(400 * 1e-5)
    # Entries added evenly (lists twice as long, 2 lists a query) are not crowding.
    grown = counters.charged(Scan(queries=2, scanned=800, seconds=0.008, entries=800))
    assert grown.drift_seconds == counters.drift_seconds
    # Exact, HNSW and GPU searches report no scans: the account is left alone.
    assert counters.charged(Scan(queries=2, scanned=0, seconds=1.0, entries=400)) == counters


def test_rent_or_buy_rebuilds_once_drift_has_cost_a_build():
    cfg = IVF.model_copy(update={"refresh_every": 100, "adaptive_rebuild": True})
    counters = _built(rows=400, lists=64, seconds=0.005)
    counters = counters.charged(Scan(queries=2, scanned=400, seconds=0.004, entries=400))
    counters = counters.charged(Scan(queries=2, scanned=800, seconds=0.016, entries=400))
    assert counters.drift_seconds < counters.build_seconds
    assert decide(counters, cfg, 1) == Decision("none", "not_due")
    counters = counters.charged(Scan(queries=2, scanned=800, seconds=0.016, entries=400))
    assert decide(counters, cfg, 1) == Decision("rebuild", "drift")
    assert decide(counters, cfg.model_copy(update={"adaptive_rebuild": False}), 1).action == "none"
    # The rebuild starts a new account.
    rebuilt = counters.rebuilt(1, rows=400, lists=64, seconds=0.005)
    assert rebuilt.drift_seconds == 0.0 and decide(rebuilt, cfg, 2).action == "none"


def test_rebuilt_starts_a_schedule_unless_resuming_a_saved_one():
    counters = _built(rows=100, lists=12, step=4).marked(3)
    again = counters.rebuilt(9, rows=103, lists=12, seconds=2.0)
    assert (again.rebuild_step, again.refresh_step, again.rebuilds) == (9, 9, 2)
    assert (again.indexed, again.pending, again.built) == (103, 0, 103)
    loaded = MinerCounters(rebuild_step=4, refresh_step=6, rebuilds=3)
    resumed = loaded.rebuilt(9, rows=100, lists=12, seconds=2.0, resume=True)
    assert (resumed.rebuild_step, resumed.refresh_step, resumed.rebuilds) == (4, 6, 4)
    fresh = MinerCounters().rebuilt(9, rows=100, lists=12, seconds=2.0, resume=True)
    assert (fresh.rebuild_step, fresh.refresh_step) == (9, 9)


def test_refreshed_indexes_the_pending_entries():
    counters = _built(rows=100, lists=12).marked(7).refreshed(3, added=7)
    assert (counters.indexed, counters.pending, counters.refresh_step) == (107, 0, 3)
    assert counters.rebuild_step == 0
