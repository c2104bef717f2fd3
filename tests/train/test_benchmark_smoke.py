"""benchmarks/determinism.py --quick runs end to end and prints its table (a smoke test, not a
timing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_determinism_benchmark_quick_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "determinism.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| synthetic.yaml")]
    assert len(rows) == 1 and rows[0].rstrip().endswith("× |")
