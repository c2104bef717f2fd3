"""Wall-clock marks of a run's phases, read by ``benchmarks/bench.py`` (the time from
``dist-contrast train`` to the first step, split into Ray start, worker start, DeepSpeed
initialize, data and pools).

Off unless ``DIST_CONTRAST_TIMING_FILE`` names a file: then every :func:`mark` appends one JSON
line ``{"phase", "time" (seconds since the epoch), "pid", "rank"}`` to it, the driver's rank
being ``null`` and a Ray worker's its ``RANK``. Nothing else reads or writes that file.
"""

from __future__ import annotations

import json
import os
import time

ENV = "DIST_CONTRAST_TIMING_FILE"


def mark(phase: str) -> None:
    """Record that ``phase`` has just ended (a no-op unless ``DIST_CONTRAST_TIMING_FILE`` is
    set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    rank = os.environ.get("RANK")
    line = json.dumps({"phase": phase, "time": time.time(), "pid": os.getpid(),
                       "rank": int(rank) if rank is not None and rank.isdigit() else None})
    # One short line in append mode: lines from several processes do not interleave.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
