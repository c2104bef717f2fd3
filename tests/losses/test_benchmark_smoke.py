"""benchmarks/loss.py --quick runs end to end and prints its table (a smoke test, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loss_benchmark_quick_run():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loss.py"), "--quick", "--threads", "1"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 64 |")]
    assert {row.split("|")[3].strip() for row in rows} == {"bare", "tiled", "untiled", "pml"}
    assert "failed" not in done.stdout
